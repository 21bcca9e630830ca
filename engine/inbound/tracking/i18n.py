"""The landing pages' words in each language, and picking the language of a page.

Message pages speak the contact's language (``contacts.locale``); the referral page, seen by a
friend we do not know yet, speaks the visitor's browser language (Accept-Language), else the
referrer's. Unknown languages fall back to English. ``{name}``-style fields are filled in with
plain text, which the page templates then escape like any other value. Language tags and text
direction are engine.base.locale's, as in the emails, so a page and its email always agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.base import locale
from engine.base.locale import direction as direction  # the pages' dir, the emails' rule

DEFAULT = "en"

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "not_found.title": "Page not found",
        "not_found.body": "This link is not valid. If you copied it from an email, check that "
        "you copied all of it.",
        "error.title": "Something went wrong",
        "error.body": "Please try again in a moment.",
        "required": "Please fill this in.",
        "email_invalid": "Please enter an email address like name@example.com.",
        "too_long": "Please keep this under {max} characters.",
        "consent_required": "Please tick this box to continue.",
        "score_invalid": "Please choose a score from 0 to 10.",
        "self_referral": "This is your own address: please enter your friend's.",
        "same_friend": "You entered the same address twice.",
        "fix_below": "Please correct the highlighted fields.",
        "expired": "This page was open for a long time. Please check your answers and send "
        "them again.",
        "send": "Send",
        "optional": "optional",
        "unsubscribe.title": "Unsubscribe",
        "unsubscribe.question": "Stop receiving emails from {sender} at {email}?",
        "unsubscribe.button": "Unsubscribe",
        "unsubscribe.done": "You are unsubscribed. You will not receive any more emails from "
        "{sender}.",
        "nps.title": "Thank you for your answer",
        "nps.chosen": "You chose {score} out of 10.",
        "nps.pending": "How likely are you to recommend {sender} to a friend or colleague?",
        "nps.score": "Your score (0 = not at all likely, 10 = extremely likely)",
        "nps.improve": "What one thing would move this score closer to 10?",
        "nps.other": "Anything else you would like to add?",
        "nps.done": "Thank you. We read every answer.",
        "referral.title": "{referrer} recommended {sender}",
        "referral.title_anonymous": "A friend recommended {sender}",
        "referral.lead": "Leave your name and email address and we will get in touch with you "
        "personally.",
        "referral.name": "Your name",
        "referral.email": "Your email address",
        "referral.consent": "I agree that {sender} may email me about this recommendation. My "
        "details are used for nothing else, and I can unsubscribe at any time.",
        "referral.done": "Thank you! We will be in touch soon.",
        "intro.title": "Who are one or two people we could help?",
        "intro.lead": "Give us their name and email address. We will write to them personally "
        "and mention that you introduced us.",
        "intro.friend": "Person {n}",
        "intro.name": "Name",
        "intro.email": "Email address",
        "intro.consent": "They know I am passing on their details and are happy to hear from "
        "{sender}.",
        "intro.done": "Thank you for the introduction! We will take good care of them.",
        "partner.title": "How should we refer our customers to you?",
        "partner.lead": "A few sentences each are enough. You can come back and change your "
        "answers at any time.",
        "partner.ideal_client": "Your ideal client: who they are, and the signs that someone is "
        "a good fit",
        "partner.problem_solved": "The problem you solve, in your clients' words",
        "partner.how_to_introduce": "How we should introduce you, and how people should get in "
        "touch",
        "partner.example_intro": "An example introduction we could send",
        "partner.example_hint": 'For example: "You mentioned you still need flowers. Mia at '
        "Petal Lane Flowers has done the flowers for several weddings we worked on. Write to "
        'her at mia@example.com and mention our name."',
        "partner.done": "Thank you! We will start sending the right people your way.",
        "testimonial.title": "A few words about working with us",
        "testimonial.text": "What would you tell a friend about {sender}?",
        "testimonial.publish": "You may publish this with my name.",
        "testimonial.done": "Thank you for your kind words!",
    },
    "id": {
        "not_found.title": "Halaman tidak ditemukan",
        "not_found.body": "Tautan ini tidak berlaku. Jika Anda menyalinnya dari email, pastikan "
        "Anda menyalin seluruhnya.",
        "error.title": "Terjadi kesalahan",
        "error.body": "Silakan coba lagi sebentar lagi.",
        "required": "Mohon isi bagian ini.",
        "email_invalid": "Mohon masukkan alamat email seperti nama@contoh.com.",
        "too_long": "Mohon tulis kurang dari {max} karakter.",
        "consent_required": "Mohon centang kotak ini untuk melanjutkan.",
        "score_invalid": "Mohon pilih nilai dari 0 sampai 10.",
        "self_referral": "Ini alamat Anda sendiri: mohon masukkan alamat teman Anda.",
        "same_friend": "Anda memasukkan alamat yang sama dua kali.",
        "fix_below": "Mohon perbaiki bagian yang ditandai.",
        "expired": "Halaman ini terbuka cukup lama. Mohon periksa jawaban Anda dan kirim lagi.",
        "send": "Kirim",
        "optional": "opsional",
        "unsubscribe.title": "Berhenti berlangganan",
        "unsubscribe.question": "Berhenti menerima email dari {sender} di {email}?",
        "unsubscribe.button": "Berhenti berlangganan",
        "unsubscribe.done": "Anda telah berhenti berlangganan. Anda tidak akan menerima email "
        "lagi dari {sender}.",
        "nps.title": "Terima kasih atas jawaban Anda",
        "nps.chosen": "Anda memilih {score} dari 10.",
        "nps.pending": "Seberapa besar kemungkinan Anda merekomendasikan {sender} kepada teman "
        "atau kolega?",
        "nps.score": "Nilai Anda (0 = sama sekali tidak mungkin, 10 = sangat mungkin)",
        "nps.improve": "Satu hal apa yang akan membuat nilai ini lebih mendekati 10?",
        "nps.other": "Ada hal lain yang ingin Anda sampaikan?",
        "nps.done": "Terima kasih. Kami membaca setiap jawaban.",
        "referral.title": "{referrer} merekomendasikan {sender}",
        "referral.title_anonymous": "Seorang teman merekomendasikan {sender}",
        "referral.lead": "Tinggalkan nama dan alamat email Anda, dan kami akan menghubungi Anda "
        "secara pribadi.",
        "referral.name": "Nama Anda",
        "referral.email": "Alamat email Anda",
        "referral.consent": "Saya setuju {sender} boleh mengirim email kepada saya tentang "
        "rekomendasi ini. Data saya tidak digunakan untuk hal lain, dan saya dapat berhenti "
        "berlangganan kapan saja.",
        "referral.done": "Terima kasih! Kami akan segera menghubungi Anda.",
        "intro.title": "Siapa satu atau dua orang yang bisa kami bantu?",
        "intro.lead": "Berikan nama dan alamat email mereka. Kami akan menulis kepada mereka "
        "secara pribadi dan menyebutkan bahwa Anda yang memperkenalkan kami.",
        "intro.friend": "Orang ke-{n}",
        "intro.name": "Nama",
        "intro.email": "Alamat email",
        "intro.consent": "Mereka tahu saya membagikan data mereka dan senang dihubungi oleh "
        "{sender}.",
        "intro.done": "Terima kasih atas perkenalannya! Kami akan melayani mereka dengan baik.",
        "partner.title": "Bagaimana kami sebaiknya merujuk pelanggan kami kepada Anda?",
        "partner.lead": "Beberapa kalimat untuk tiap pertanyaan sudah cukup. Anda dapat kembali "
        "dan mengubah jawaban kapan saja.",
        "partner.ideal_client": "Klien ideal Anda: siapa mereka, dan tanda bahwa seseorang cocok",
        "partner.problem_solved": "Masalah yang Anda selesaikan, dengan kata-kata klien Anda",
        "partner.how_to_introduce": "Bagaimana kami sebaiknya memperkenalkan Anda, dan bagaimana "
        "orang menghubungi Anda",
        "partner.example_intro": "Contoh perkenalan yang bisa kami kirim",
        "partner.example_hint": 'Misalnya: "Anda bilang masih mencari bunga. Mia dari Petal '
        "Lane Flowers sudah menangani bunga untuk beberapa pernikahan yang kami kerjakan. "
        'Kirim email ke mia@example.com dan sebut nama kami."',
        "partner.done": "Terima kasih! Kami akan mulai mengirim orang yang tepat kepada Anda.",
        "testimonial.title": "Beberapa kata tentang bekerja sama dengan kami",
        "testimonial.text": "Apa yang akan Anda katakan kepada teman tentang {sender}?",
        "testimonial.publish": "Anda boleh menerbitkan ini dengan nama saya.",
        "testimonial.done": "Terima kasih atas kata-kata baik Anda!",
    },
    "ar": {
        "not_found.title": "الصفحة غير موجودة",
        "not_found.body": "هذا الرابط غير صالح. إذا نسخته من رسالة بريد إلكتروني، فتأكد من "
        "نسخه كاملًا.",
        "error.title": "حدث خطأ",
        "error.body": "يرجى المحاولة مرة أخرى بعد قليل.",
        "required": "يرجى تعبئة هذا الحقل.",
        "email_invalid": "يرجى إدخال عنوان بريد إلكتروني مثل name@example.com.",
        "too_long": "يرجى ألا يتجاوز النص {max} حرف.",
        "consent_required": "يرجى تحديد هذا المربع للمتابعة.",
        "score_invalid": "يرجى اختيار درجة من 0 إلى 10.",
        "self_referral": "هذا عنوانك أنت: يرجى إدخال عنوان صديقك.",
        "same_friend": "أدخلت العنوان نفسه مرتين.",
        "fix_below": "يرجى تصحيح الحقول المحددة.",
        "expired": "ظلت هذه الصفحة مفتوحة مدة طويلة. يرجى مراجعة إجاباتك وإرسالها مرة أخرى.",
        "send": "إرسال",
        "optional": "اختياري",
        "unsubscribe.title": "إلغاء الاشتراك",
        "unsubscribe.question": "هل تريد التوقف عن تلقي رسائل {sender} على {email}؟",
        "unsubscribe.button": "إلغاء الاشتراك",
        "unsubscribe.done": "تم إلغاء اشتراكك. لن تتلقى أي رسائل أخرى من {sender}.",
        "nps.title": "شكرًا لإجابتك",
        "nps.chosen": "اخترت {score} من 10.",
        "nps.pending": "ما مدى احتمال أن توصي بـ {sender} لصديق أو زميل؟",
        "nps.score": "درجتك (0 = غير محتمل إطلاقًا، 10 = محتمل جدًا)",
        "nps.improve": "ما الشيء الواحد الذي سيقرّب هذه الدرجة من 10؟",
        "nps.other": "هل هناك أي شيء آخر تود إضافته؟",
        "nps.done": "شكرًا لك. نحن نقرأ كل إجابة.",
        "referral.title": "{referrer} أوصى بـ {sender}",
        "referral.title_anonymous": "أوصى أحد الأصدقاء بـ {sender}",
        "referral.lead": "اترك اسمك وعنوان بريدك الإلكتروني وسنتواصل معك شخصيًا.",
        "referral.name": "اسمك",
        "referral.email": "عنوان بريدك الإلكتروني",
        "referral.consent": "أوافق على أن يراسلني {sender} بالبريد الإلكتروني بخصوص هذه "
        "التوصية. لن تُستخدم بياناتي لأي غرض آخر، ويمكنني إلغاء الاشتراك في أي وقت.",
        "referral.done": "شكرًا لك! سنتواصل معك قريبًا.",
        "intro.title": "من هم الشخص أو الشخصان اللذان يمكننا مساعدتهما؟",
        "intro.lead": "أعطنا اسميهما وعنواني بريدهما الإلكتروني. سنكتب إليهما شخصيًا ونذكر "
        "أنك من عرّفنا بهما.",
        "intro.friend": "الشخص {n}",
        "intro.name": "الاسم",
        "intro.email": "عنوان البريد الإلكتروني",
        "intro.consent": "هم يعلمون أنني أشارك بياناتهم ويسعدهم أن يتواصل معهم {sender}.",
        "intro.done": "شكرًا على التعريف! سنعتني بهم جيدًا.",
        "partner.title": "كيف نحيل عملاءنا إليك؟",
        "partner.lead": "بضع جمل لكل سؤال تكفي. يمكنك العودة وتغيير إجاباتك في أي وقت.",
        "partner.ideal_client": "عميلك المثالي: من هو، وما العلامات التي تدل على أن شخصًا ما مناسب",
        "partner.problem_solved": "المشكلة التي تحلها، بكلمات عملائك",
        "partner.how_to_introduce": "كيف نعرّف بك، وكيف يتواصل الناس معك",
        "partner.example_intro": "مثال على تعريف يمكننا إرساله",
        "partner.example_hint": 'مثلًا: "ذكرت أنك ما زلت تبحث عن الزهور. ميا من Petal Lane '
        "Flowers نسّقت الزهور في عدة حفلات زفاف عملنا عليها. راسلها على mia@example.com واذكر "
        'اسمنا."',
        "partner.done": "شكرًا لك! سنبدأ بإرسال الأشخاص المناسبين إليك.",
        "testimonial.title": "بضع كلمات عن العمل معنا",
        "testimonial.text": "ماذا ستقول لصديق عن {sender}؟",
        "testimonial.publish": "يمكنكم نشر هذا مع اسمي.",
        "testimonial.done": "شكرًا على كلماتك اللطيفة!",
    },
}


def language(tag: str | None) -> str:
    """The page language for a contact locale: ``"pt-BR"`` -> ``"en"`` (no Portuguese pages),
    ``"ar_EG"`` -> ``"ar"``, ``None`` -> ``"en"``."""
    lang = locale.language(tag)
    return lang if lang in STRINGS else DEFAULT


def negotiate(accept_language: str | None, fallback: str | None) -> str:
    """The best page language for an Accept-Language header, else ``fallback``'s.

    ``negotiate("fr-FR,id;q=0.8,en;q=0.5", None)`` -> ``"id"``.
    """
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        lang = locale.language(tag)
        if lang in STRINGS and quality > 0:
            ranked.append((-quality, i, lang))
    return min(ranked)[2] if ranked else language(fallback)


class Translator:
    """``t(key, **fields)``: the text of ``key`` in one language (English when missing)."""

    def __init__(self, lang: str, strings: Mapping[str, Mapping[str, str]] = STRINGS) -> None:
        self.lang = lang
        self._own = strings.get(lang, {})
        self._default = strings[DEFAULT]

    def __call__(self, key: str, **fields: object) -> str:
        text = self._own.get(key) or self._default[key]
        return text.format(**fields) if fields else text
