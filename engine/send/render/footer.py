"""The end of every email: postal address and unsubscribe link in the contact's language, the
hidden link only link scanners follow, and the open pixel."""

from __future__ import annotations

import html as htmllib

from engine.base.locale import direction
from engine.mail.tokens import Links
from engine.send.render.model import DEFAULT_LANG
from engine.send.render.sandbox import escape_output

# Footer lines per language: (question, link label). Fallback: English.
FOOTER_TEXT: dict[str, tuple[str, str]] = {
    "en": ("Don't want these emails?", "Unsubscribe"),
    "id": ("Tidak ingin menerima email ini?", "Berhenti berlangganan"),
    "ar": ("لا ترغب في تلقي هذه الرسائل؟", "إلغاء الاشتراك"),
    "es": ("¿No quieres recibir estos correos?", "Cancelar la suscripción"),
    "fr": ("Vous ne souhaitez plus recevoir ces e-mails ?", "Se désabonner"),
    "de": ("Sie möchten diese E-Mails nicht mehr erhalten?", "Abmelden"),
    "pt": ("Não quer receber estes e-mails?", "Cancelar inscrição"),
}


class Footer:
    """Adds the footer, the hidden link and the open pixel to one email's parts.

    The hidden link (before the open pixel) is invisible, out of the keyboard order and hidden
    from screen readers, so only link scanners follow it. Its click token has no destination;
    the tracking app records the request as machine traffic.
    """

    def __init__(self, postal_address: str, links: Links) -> None:
        self._postal = postal_address
        self._links = links
        self._parts: dict[str, tuple[str, str, str]] = {}

    def add_html(self, html: list[str], lang: str, unsubscribe: str, ref: bytes) -> None:
        """Puts the footer, the hidden link and the pixel before the last ``</body>`` of the
        rendered pieces ``html`` (at their end without one)."""
        before_link, after_link, _ = self._footer(lang)
        honeypot = self._links.honeypot(ref)
        tail = (
            f"{before_link}{escape_output(unsubscribe)}{after_link}\n"
            f'<a href="{honeypot}" style="display:none" aria-hidden="true" tabindex="-1"></a>'
            f'<img src="{escape_output(self._links.open(ref))}" width="1" height="1" alt="" '
            'style="display:block;border:0">'
        )
        # Before the last </body>, which is in one of the last (static) pieces.
        for i in range(len(html) - 1, -1, -1):
            cut = html[i].rfind("</body>")
            if cut >= 0:
                html[i : i + 1] = (html[i][:cut], tail, html[i][cut:])
                break
        else:
            html.append(tail)

    def add_text(self, text: str, lang: str, unsubscribe: str) -> str:
        """``text`` followed by the plain-text footer and the unsubscribe URL."""
        return f"{text}{self._footer(lang)[2]}{unsubscribe}\n"

    def _footer(self, lang: str) -> tuple[str, str, str]:
        """The footer in ``lang`` (else English): HTML before and after the unsubscribe URL,
        and the text footer up to that URL."""
        found = self._parts.get(lang)
        if found is None:
            code = lang if lang in FOOTER_TEXT else DEFAULT_LANG
            question, label = FOOTER_TEXT[code]
            e = htmllib.escape
            before = (
                f'<div lang="{code}" dir="{direction(code)}" style="margin:0 auto;'
                "max-width:600px;padding:16px 25px 24px;font-family:Arial,Helvetica,sans-serif;"
                'font-size:12px;line-height:18px;color:#6b7280;text-align:center;">'
                f'<p style="margin:0 0 6px;">{e(self._postal)}</p>'
                f'<p style="margin:0;">{e(question)} <a href="'
            )
            after = f'" style="color:#6b7280;text-decoration:underline;">{e(label)}</a></p></div>'
            found = (before, after, f"\n\n-- \n{self._postal}\n{question} {label}: ")
            self._parts[lang] = found
        return found
