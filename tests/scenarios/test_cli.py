"""The command line as users and scripts see it: exit codes, messages, the run loop."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from engine.cli import main
from tests.conftest import ROOT, Project
from tests.support.scenario import ASK, HEADER, TEMPLATES, contacts, engine_command, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


def test_validate_accepts_the_shipped_program(project: Project) -> None:
    code, out = project.cli("validate")
    assert code == 0, out
    assert "ok: 9 sequences" in out


def test_validate_reports_file_line_col_and_keeps_the_rest(program: Project) -> None:
    program.write("sequences/broken.yaml", "id: broken\nname: [unclosed\nsteps: []\n")
    program.write(
        "sequences/typo.yaml",
        ASK.replace("id: ask", "id: typo")
        .replace("ask.mjml", "aks.mjml")
        .replace("wait: 3d", "wait: 3days"),
    )
    code, out = program.cli("validate")
    assert code == 1
    broken = str(program.dir / "sequences" / "broken.yaml")
    assert f"{broken}:2:" in out or f"{broken}:3:" in out
    assert "typo.yaml:" in out and "aks.mjml" in out and "3days" in out
    # the good files still load and run
    contacts(program, ANA)
    code, out = program.cli("tick")
    assert code == 0 and "skipped" in out
    assert len(program.sink.messages) == 1


def test_validate_reports_template_typos_with_their_line(program: Project) -> None:
    program.write(
        "templates/ask.mjml",
        TEMPLATES["ask.mjml"].replace("{{ contact.first_name }}", "{{ contact.first_name }"),
    )
    program.write(
        "templates/reminder.mjml",
        (
            '<mjml><mj-body><mj-section><mj-column><mj-image width="{{ w }}" src="https://x.example/a.png"/>'
            "</mj-column></mj-section></mj-body></mjml>\n"
        ),
    )
    code, out = program.cli("validate")
    assert code == 1
    assert "ask.mjml:1:" in out
    assert "reminder.mjml:1:" in out and "attribute" in out


def test_bad_now_and_bad_settings_are_errors_not_tracebacks(program: Project) -> None:
    code, out = program.cli("--now", "next tuesday", "tick")
    assert code == 2 and "--now" in out and "Traceback" not in out
    program.settings_path.write_text(program.settings_path.read_text() + "\n[smtp2]\nx = 1\n")
    code, out = program.cli("tick")
    assert code == 2 and "smtp2" in out


def test_report_formats(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    code, out = program.cli("report", "--format", "json")
    data = json.loads(out)
    assert data["steps"][0]["sequence"] == "ask" and data["steps"][0]["sent"] == 1
    assert data["referrals"]["asked"] == 1
    code, out = program.cli("report", "--format", "csv")
    lines = out.strip().splitlines()
    assert lines[0].startswith("sequence,step,queued,sent") and lines[1].startswith("ask,ask,0,1")
    code, out = program.cli("report")
    assert code == 0 and "referral funnel: asked 1" in out


def test_explain_lists_every_sequence(program: Project) -> None:
    contacts(program, ANA)
    _, out = program.cli("explain", "--contact", "ana@example.com")
    assert "eligible" in out and "enters on the next tick" in out
    assert "starts when referral.created happens" in out
    program.cli("tick")
    _, out = program.cli("explain", "--contact", "ana@example.com")
    assert "next: reminder" in out or "next: wait" in out
    code, out = program.cli("explain", "--contact", "nobody@example.com")
    assert code == 2 and "no contact" in out


@pytest.mark.slow
def test_run_sends_serves_the_tracking_app_and_stops_cleanly_on_sigterm(program: Project) -> None:
    import socket
    import time

    import httpx

    contacts(program, ANA)
    cmd, env = engine_command(program, "run", "--interval", "0.2")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env["ENGINE_TRACKING_LISTEN"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        program.sink.wait_for(1, timeout=30)
        deadline = time.monotonic() + 15
        while True:  # the app starts next to the scheduler
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert health.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert len(program.sink.messages) == 1
    assert f"tracking app on 127.0.0.1:{port}" in out and "IMAP poller off" in out, out


def test_hostile_or_broken_input_gets_a_message_not_a_traceback(
    program: Project, tmp_path: Path
) -> None:
    code, out = program.cli("explain", "--contact", "[/red]@x.example")
    assert code == 2 and "no contact [/red]@x.example" in out
    code, out = program.cli("contacts", "import", str(tmp_path))
    assert code == 2 and "not a file" in out
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(
        "email,first_name\nok@example.com,Ok\nj@example.com,J\xe9r\xf4me\n".encode("latin-1")
    )
    code, out = program.cli("contacts", "import", str(latin1))
    assert code == 2 and "not UTF-8" in out and "Traceback" not in out
    weird = program.contacts("email,nps_score\nw@example.com,\u00b2\n", "weird.csv")
    code, out = program.cli("contacts", "import", str(weird))
    assert code == 1 and "nps_score" in out
    contacts(program, ANA)
    program.cli("referrals", "add", "--referrer", "ana@example.com", "--email", "f@example.com")
    for bad in ("1e20", "NaN", "-5", "lots"):
        code, out = program.cli("referrals", "convert", "--email", "f@example.com", "--value", bad)
        assert code == 2 and "--value" in out


def test_sending_refuses_a_placeholder_secret(program: Project) -> None:
    program.settings_path.write_text(
        program.settings_path.read_text().replace("test-secret-0123456789abcdef", "change-me")
    )
    contacts(program, ANA)
    code, out = program.cli("tick")
    assert code == 2 and "ENGINE_TRACKING_SECRET" in out
    assert program.sink.messages == []
    assert program.cli("validate")[0] == 0  # checking files needs no secret


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    code = main(
        ["demo", "--dir", str(precious), "--weeks", "1"], console=Console(file=io.StringIO())
    )
    assert code == 2
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_engine_now_and_engine_settings_stand_in_for_the_options(
    program: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    contacts(program, ANA)
    monkeypatch.setenv("ENGINE_SETTINGS", str(program.settings_path))
    monkeypatch.setenv("ENGINE_NOW", "2026-03-02T09:30:00+00:00")

    def tick(*options: str) -> str:
        out = io.StringIO()
        console = Console(file=out, width=220, color_system=None)
        assert main([*options, "tick"], console=console) == 0, out.getvalue()
        return out.getvalue()

    assert tick().startswith("2026-03-02 09:30 UTC: enrolled 1,")
    # the option wins over the environment
    assert tick("--now", "2026-03-09T10:00:00Z").startswith("2026-03-09 10:00 UTC:")
    monkeypatch.setenv("ENGINE_SETTINGS", str(program.dir / "missing.toml"))
    out = io.StringIO()
    assert main(["tick"], console=Console(file=out, width=220)) == 2
    assert "missing.toml" in out.getvalue()


@pytest.mark.parametrize("many", [True, False], ids=["bar", "quiet"])
def test_long_imports_and_sends_show_a_progress_bar(
    program: Project, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    import engine.cli.commands

    rows = [ANA.replace("ana@", f"ana{i}@") for i in range(5)]
    threshold = 5 if many else 6
    monkeypatch.setattr(engine.cli.commands, "IMPORT_BAR_FROM", threshold)
    monkeypatch.setattr(engine.cli.commands, "SEND_BAR_FROM", threshold)
    monkeypatch.setenv("ENGINE_SCHEDULE_BATCH_SIZE", "2")  # the bar runs across batches

    def terminal(*args: str) -> str:
        out = io.StringIO()
        console = Console(file=out, width=120, color_system=None, force_terminal=True)
        now = program.clock.now().isoformat()
        code = main(["--settings", str(program.settings_path), "--now", now, *args], console)
        assert code == 0, out.getvalue()
        return out.getvalue()

    imported = terminal("contacts", "import", str(program.contacts(HEADER + "\n".join(rows))))
    assert ("importing" in imported and "5/5" in imported) is many
    assert "5 created" in imported
    sent = terminal("tick")
    assert ("sending" in sent and "5/5" in sent) is many
    assert "sent 5," in sent
    assert len(program.sink.messages) == 5
