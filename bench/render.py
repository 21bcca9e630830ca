"""Per-recipient cost of an email: the engine (MJML compiled once) vs compiling MJML per email.

Engine: render from the precompiled template (HTML, text part, click tracking, footer and open
pixel), then the MIME bytes. Naive, as the issue words it: the MJML source rendered with Jinja
(the engine's own sandboxed, autoescaping environment and context) and compiled with mjml2html
for every recipient, then its text part (the .txt twin, else derived from its HTML) and the
MIME bytes. The naive side does no click tracking and adds no footer or pixel: it does less.
Prints ms per email (best round), the ratio against the 3x target (MIME included on both
sides: the median over rounds of the ratio within a round, where the works take turns under
about the same load, with its range and the ratio of the best rounds), the render-only ratio,
peak memory (tracemalloc), and what mjml2html and the MIME builder cost alone. Runs on
templates/referral-ask.mjml (with its .txt twin), then on a built-in ~60-line template without
one (its text part is derived from the HTML: once by the engine, per email by the naive way).
Run: .venv/bin/python bench/render.py [N]
"""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mjml
from jinja2 import FileSystemLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.mail.tokens import Links, Signer  # noqa: E402
from engine.program.settings import SenderSettings  # noqa: E402
from engine.send.render import Rendered, Renderer, Sandbox, TemplateLinks, html_to_text  # noqa: E402

TEMPLATE = "referral-ask.mjml"
ROUNDS = 15  # interleaved rounds of n / ROUNDS recipients per work
SUBJECT = "{{ contact.first_name }}, who are one or two people we could help?"
BUILTIN = """\
<mjml>
  <mj-head>
    <mj-title>Who are one or two people we could help?</mj-title>
    <mj-preview>A ready-made introduction you can forward in a minute.</mj-preview>
    <mj-attributes>
      <mj-all font-family="Helvetica, Arial, sans-serif" />
      <mj-text font-size="16px" line-height="1.6" color="#1f2937" padding="0 24px 16px" />
      <mj-button background-color="#1d4ed8" color="#ffffff" border-radius="8px" align="left" />
    </mj-attributes>
  </mj-head>
  <mj-body background-color="#f3f4f6">
    <mj-section padding="24px 0 12px">
      <mj-column>
        <mj-image src="https://cdn.example.com/logo.png" alt="{{ sender.from_name }}"
                  width="120px" href="https://example.com/?utm_source=email&amp;utm_medium=ask" />
      </mj-column>
    </mj-section>
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-text font-size="24px" font-weight="700">Who could we help?</mj-text>
        <mj-text>Hi {{ contact.first_name | default("there") }},</mj-text>
        <mj-text>You told us you would recommend us{% if contact.company is defined %}
          to others at {{ contact.company }}{% endif %}. Thank you: it means a lot.</mj-text>
        <mj-text>So here is a specific question: <strong>who are one or two people you could
          introduce us to?</strong> <a href="https://example.com/how-it-works?src=ask&amp;v=2">
          See how introductions work</a>.</mj-text>
        <mj-button href="{{ links.intro_form }}">Introduce someone</mj-button>
      </mj-column>
    </mj-section>
    {% if contact.nps_score is defined and contact.nps_score >= 9 %}
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-text>Your personal page gives your friends a first-month credit:
          <a href="{{ links.referral }}">{{ links.referral }}</a></mj-text>
      </mj-column>
    </mj-section>
    {% endif %}
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-text>Can't think of anyone right now? A short testimonial helps too.</mj-text>
        <mj-button href="{{ links.testimonial }}" background-color="#ffffff" color="#1d4ed8"
                   border="2px solid #1d4ed8">Write a testimonial</mj-button>
        <mj-text font-size="14px">How likely are you to recommend us today?</mj-text>
        <mj-text font-size="14px">{% for score in range(0, 11) %}
          <a href="{{ links.nps(score) }}">{{ score }}</a>{% endfor %}</mj-text>
      </mj-column>
    </mj-section>
    <mj-section>
      <mj-column>
        <mj-text font-size="14px" color="#4b5563">Questions? Reply to this email or write to
          <a href="mailto:{{ sender.reply_to }}">{{ sender.reply_to }}</a>.
          Read our <a href="https://example.com/blog/referrals">referral program guide</a>
          or follow us on <a href="https://social.example.com/acme">social media</a>.</mj-text>
      </mj-column>
    </mj-section>
    <mj-section>
      <mj-column>
        <mj-text font-size="12px" color="#6b7280">{{ sender.from_name }} helps teams like
          {{ contact.company | default("yours") }} grow through introductions.</mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""


def contact(i: int) -> dict[str, Any]:
    return {
        "first_name": f"Person{i}",
        "last_name": "Lima",
        "email": f"person{i}@example.com",
        "company": f"Company {i} & Sons",
        "nps_score": 9 + i % 2,
        "referral_code": f"code{i}",
        "locale": "en",
    }


def context(i: int) -> dict[str, Any]:
    return {
        "contact": contact(i),
        "sequence": "referral-ask",
        "step": "ask",
        "referral": None,
        "reward": None,
    }


def timed(n: int, work: Callable[[int], object]) -> float:
    """Seconds per call of ``work`` over ``n`` distinct recipients."""
    start = time.perf_counter()
    for i in range(n):
        work(i)
    return (time.perf_counter() - start) / n


def rounds_of(
    rounds: int, n: int, works: dict[str, Callable[[int], object]]
) -> dict[str, list[float]]:
    """Per-call seconds of each work in each round. The works take turns within a round, so
    each round times all of them under about the same load: on a busy machine a ratio within
    a round holds far better than a ratio of two rounds taken at different moments."""
    times: dict[str, list[float]] = {label: [] for label in works}
    for _ in range(rounds):
        for label, work in works.items():
            times[label].append(timed(max(1, n // rounds), work))
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """The median, lowest and highest of ``slow / fast`` round by round."""
    ratios = sorted(s / f for s, f in zip(slow, fast, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def peak_bytes(n: int, work: Callable[[int], object]) -> int:
    tracemalloc.start()
    try:
        for i in range(n):
            work(i)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory(prefix="bench-render-") as scratch:
        (Path(scratch) / TEMPLATE).write_text(BUILTIN, encoding="utf-8")
        for templates in (ROOT / "templates", Path(scratch)):
            run(templates, n)
            print()


def run(templates: Path, n: int) -> None:
    """Time both ways on ``templates / TEMPLATE`` over ``n`` recipients and print the figures."""
    source_lines = (templates / TEMPLATE).read_text(encoding="utf-8").count("\n")
    sender = SenderSettings()
    sender_vars = {
        "from_name": sender.from_name,
        "from_email": sender.from_email,
        "reply_to": sender.reply_to,
        "postal_address": sender.postal_address,
    }
    links = Links("https://t.example.com", Signer("bench-secret"))
    renderer = Renderer(templates, links=links, sender=sender)

    start = time.perf_counter()
    first = renderer.render(TEMPLATE, SUBJECT, context(0), locale="en", ref=secrets.token_bytes(12))
    compile_ms = (time.perf_counter() - start) * 1000

    try:
        from engine.mail.mime import OutgoingEmail, build_message
    except ImportError as exc:
        sys.exit(f"engine.mail.mime.build_message is needed on both sides: {exc}")
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    def mime(subject: str, html: str, text: str, i: int, ref: bytes) -> bytes:
        return build_message(
            OutgoingEmail(
                message_id=f"<{ref.hex()}@example.com>",
                from_name=sender.from_name,
                from_email=sender.from_email,
                reply_to=sender.reply_to,
                to_name=f"Person{i} Lima",
                to_email=f"person{i}@example.com",
                subject=subject,
                html=html,
                text=text,
                date=now,
                list_unsubscribe_url=links.unsubscribe(ref),
                feedback_id="ask:referral-ask:referral:bench",
            )
        )

    def engine_render(i: int) -> tuple[Rendered, bytes]:
        ref = secrets.token_bytes(12)
        return renderer.render(TEMPLATE, SUBJECT, context(i), locale="en", ref=ref), ref

    def engine_email(i: int) -> bytes:
        rendered, ref = engine_render(i)
        return mime(rendered.subject, rendered.html, rendered.text, i, ref)

    # The engine's environments (sandbox, autoescape, budget), on the MJML source as written.
    loader = FileSystemLoader(str(templates))
    naive_html = Sandbox(loader=loader, autoescape=True)
    naive_text = Sandbox(
        loader=loader,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    naive_template = naive_html.get_template(TEMPLATE)
    naive_subject = naive_text.from_string(SUBJECT)
    twin = Path(TEMPLATE).with_suffix(".txt").name
    naive_twin = naive_text.get_template(twin) if (templates / twin).is_file() else None

    def naive_context(i: int, ref: bytes) -> dict[str, Any]:
        ctx = context(i)
        code = ctx["contact"]["referral_code"]
        links_ = TemplateLinks(links, ref, code)
        return {**ctx, "sender": sender_vars, "lang": "en", "dir": "ltr", "links": links_}

    def naive(i: int) -> tuple[str, dict[str, Any], bytes]:
        ref = secrets.token_bytes(12)
        ctx = naive_context(i, ref)
        return mjml.mjml2html(naive_template.render(ctx)), ctx, ref

    def naive_email(i: int) -> bytes:
        markup, ctx, ref = naive(i)
        text = naive_twin.render(ctx) if naive_twin is not None else html_to_text(markup)
        return mime(naive_subject.render(ctx), markup, text, i, ref)

    for warm_up in (engine_email, naive_email):
        warm_up(0)
    engine_row = "engine: complete email (render + MIME)"
    naive_row = "naive: complete email (+ text part + MIME)"
    rows = [
        ("engine: render (HTML + text + click tracking + footer)", engine_render),
        (engine_row, engine_email),
        ("naive: Jinja on the MJML + mjml2html", naive),
        (naive_row, naive_email),
    ]
    times = rounds_of(ROUNDS, n, dict(rows))
    seconds = {label: min(values) for label, values in times.items()}
    peaks = {label: peak_bytes(max(1, min(n, 50)), work) for label, work in rows}
    source = naive_template.render(naive_context(0, b"\x01" * 12))
    mjml_s = timed(n, lambda i: mjml.mjml2html(source))
    mime_s = timed(n, lambda i: mime(first.subject, first.html, first.text, i, b"\x01" * 12))

    print(f"template: {templates / TEMPLATE} ({source_lines} lines), {n} recipients")
    print(f"compile once (MJML + Jinja, first render): {compile_ms:.1f} ms")
    for label, _ in rows:
        ms = seconds[label] * 1000
        print(f"  {label:56s} {ms:7.3f} ms/email  peak {peaks[label] // 1024:4d} KiB")
    print("  (the naive side does no click tracking and adds no footer or open pixel)")
    ratio, low, high = paired_ratio(times[naive_row], times[engine_row])
    verdict = "meets" if ratio >= 3 else "MISSES"
    print(
        f"ratio naive / engine, complete emails: {ratio:.2f}x ({verdict} the 3x target; "
        f"median of {ROUNDS} rounds, {low:.2f}x-{high:.2f}x; best rounds above: "
        f"{seconds[naive_row] / seconds[engine_row]:.2f}x)"
    )
    render_ratio, low, high = paired_ratio(times[rows[2][0]], times[rows[0][0]])
    print(
        f"ratio naive / engine, render only (no text part or MIME on the naive side): "
        f"{render_ratio:.2f}x ({low:.2f}x-{high:.2f}x)"
    )
    print(
        f"alone: mjml2html {mjml_s * 1000:.3f} ms/email (what compiling once saves), "
        f"MIME {mime_s * 1000:.3f} ms/email (paid on both sides)"
    )
    ceiling = seconds[naive_row] / mime_s
    print(
        f"ceiling of the complete-email ratio with this MIME cost (an engine render of 0 ms): "
        f"{ceiling:.2f}x"
    )


if __name__ == "__main__":
    main()
