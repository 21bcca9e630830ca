"""`status` (health at a glance), `tick`'s reasons for retrying and holding, and the warnings
about `[notify]` roles that have no address, through the command line."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Project
from tests.support.scenario import HEADER, TEMPLATES, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
BO = "bo@example.com,Bo,Ng,Ng Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
CY = "cy@example.com,Cy,Ode,Ode Co,UTC,10,2026-01-01,2025-01-01,,en,customer"


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


def test_status_is_healthy_then_names_what_needs_a_person(program: Project) -> None:
    path = program.contacts(HEADER.replace("\n", ",team\n") + f"{ANA},Sales\n{BO},\n{CY},Ops\n")
    code, out = program.cli("contacts", "import", str(path))
    assert code == 0, out
    code, out = program.cli("status")
    assert code == 0, out
    assert "sending: not paused" in out and "last tick: never" in out and "healthy" in out
    assert "mailbox: not configured" in out and "webhooks: 0 failed" in out

    # Bo's template needs a field Bo does not have (held); Cy's server says try later.
    program.write(
        "templates/ask.mjml",
        TEMPLATES["ask.mjml"].replace(
            "Hi {{ contact.first_name }}", "Hi {{ contact.first_name }} of {{ contact.team }}"
        ),
    )
    program.sink.rcpt_responses["cy@example.com"] = "451 4.3.0 Mailbox busy, try again later"
    code, out = program.cli("tick")
    assert code == 0, out
    assert "sent 1, retrying 1, failed 0, held 1" in out, out
    assert "  retrying 1: 451 4.3.0 Mailbox busy, try again later" in out, out
    assert "  held 1: render_failed:" in out, out

    code, out = program.cli("status")
    assert code == 1, out
    assert "emails: due now 0, later today 1, retrying 1, held 1" in out, out
    assert "  held 1: render_failed:" in out
    assert "last tick: at 2026-03-02T10:00:00+00:00, sent 1, retrying 1, failed 0, held 1" in out
    assert "needs attention: 1 email(s) held" in out, out


def test_validate_tick_and_run_warn_about_notify_roles_without_an_address(
    project: Project,
) -> None:
    code, out = project.cli("validate")
    assert code == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("warning: [notify]")]
    # The shipped NPS sequences tell the owner, sales and the account manager.
    assert [w.split()[2] for w in warnings] == ["account_manager", "owner", "sales"], out
    assert "nps-detractor/" in warnings[1] and "go to nobody" in warnings[1]
    code, out = project.cli("tick")
    assert code == 0 and out.count("warning: [notify]") == 3, out

    with project.settings_path.open("a", encoding="utf-8") as fh:
        fh.write(
            '[notify]\nowner = "founder@acme.example"\nsales = "sales@acme.example"\n'
            'account_manager = "am@acme.example"\n'
        )
    code, out = project.cli("validate")
    assert code == 0 and "warning" not in out, out
