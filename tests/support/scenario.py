"""A small test program: its own sequences and templates, so scenarios test the engine's
rules rather than the shipped copy (which has tests of its own)."""

from __future__ import annotations

from tests.conftest import Project

ASK = """
id: ask
name: Ask promoters
audience:
  kind: customer
  nps: promoter
stop_when: [replied, unsubscribed, bounced, referred]
steps:
  - id: ask
    send:
      template: ask.mjml
      subject: "{{ contact.first_name }}, who could you introduce?"
      referral_ask: true
  - wait: 3d
  - id: reminder
    send:
      template: reminder.mjml
      subject: "Re: {{ contact.first_name }}, who could you introduce?"
      reply_to_previous: true
      referral_ask: true
"""

THANKS = """
id: thanks
name: Thank the referrer
trigger: referral.created
stop_when: [unsubscribed, bounced]
send_window: {days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59", timezone: UTC}
steps:
  - id: thanks
    send:
      template: thanks.mjml
      subject: "Thank you for introducing {{ referral.friend_name | default('your friend') }}"
"""

REWARD = """
id: reward
name: Reward on conversion
trigger: referral.converted
stop_when: [unsubscribed, bounced]
send_window: {days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59", timezone: UTC}
steps:
  - id: reward
    send: {template: thanks.mjml, subject: "Good news about {{ referral.friend_email }}"}
"""


def mjml(body: str) -> str:
    return (
        "<mjml><mj-body><mj-section><mj-column><mj-text>"
        f"{body}"
        "</mj-text></mj-column></mj-section></mj-body></mjml>\n"
    )


TEMPLATES = {
    "ask.mjml": mjml(
        "Hi {{ contact.first_name }}, who are one or two people at "
        '{{ contact.company | default("your company") }}\'s peers we could help? '
        '<a href="https://acme.example/why?a=1&b=2">Why us</a>'
    ),
    "ask.ar.mjml": mjml("مرحبا {{ contact.first_name }}"),
    "reminder.mjml": mjml("Just bumping this, {{ contact.first_name }}."),
    "thanks.mjml": mjml("Thank you, {{ contact.first_name | default('friend') }}!"),
}

HEADER = (
    "email,first_name,last_name,company,timezone,nps_score,nps_at,customer_since,"
    "last_complaint_at,locale,kind\n"
)


def setup(project: Project, sequences: dict[str, str] | None = None) -> Project:
    for name, text in (sequences or {"ask": ASK, "thanks": THANKS, "reward": REWARD}).items():
        project.write(f"sequences/{name}.yaml", text)
    for name, text in TEMPLATES.items():
        project.write(f"templates/{name}", text)
    return project


def contacts(project: Project, *rows: str) -> None:
    path = project.contacts(HEADER + "\n".join(rows) + "\n")
    _code, out = project.cli("contacts", "import", str(path))
    assert "rejected" in out, out


def sent_to(project: Project) -> list[str]:
    return [m.rcpt_tos[0] for m in project.sink.messages]


def record(project: Project, event: str, *, to: str | None = None, step: str | None = None) -> None:
    """Record ``event`` about the latest email (to ``to``, of ``step``), as the tracking app or
    the IMAP poller would."""
    from sqlalchemy import select

    from engine.records.events import record_event
    from engine.store.models import Contact, Message

    engine = project.engine()
    query = select(Message).order_by(Message.id.desc()).limit(1)
    if step is not None:
        query = query.where(Message.step_id == step)
    if to is not None:
        query = query.join(Contact, Contact.id == Message.contact_id).where(Contact.email == to)
    with engine.db.write() as session:
        message = session.scalars(query).one()
        record_event(
            session, event, project.clock.now(), contact_id=message.contact_id, message=message
        )
    engine.close()


def engine_command(project: Project, *args: str) -> tuple[list[str], dict[str, str]]:
    """`python -m engine` with this project's settings and clock, for a subprocess."""
    import os
    import sys

    from tests.conftest import ROOT

    cmd = [
        sys.executable,
        "-m",
        "engine",
        "--settings",
        str(project.settings_path),
        "--now",
        project.clock.now().isoformat(),
        *args,
    ]
    return cmd, {**os.environ, "PYTHONPATH": str(ROOT)}
