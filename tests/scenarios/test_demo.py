"""The README's first command must keep working: the demo, end to end, as a subprocess."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_demo_plays_a_program_and_keeps_every_email(tmp_path: Path) -> None:
    out_dir = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "demo",
            "--dir",
            str(out_dir),
            "--weeks",
            "5",
            "--speed",
            str(7 * 86400 / 2.5),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for moment in (
        "Ana opens the referral ask (the open pixel, through the tracking app) (HTTP 200)",
        "Layla replies to the referral ask (read from the reply mailbox; the sequence stops) "
        "(read as reply)",
        "Budi presses Unsubscribe in his mail app (RFC 8058 one-click; nothing more is sent) "
        "(HTTP 200)",
        "Mia opens Ana's personal referral page (a visit in the funnel) (HTTP 200)",
        "Ana introduces Mia",
        "Tom clicks 10 in the NPS survey (routing: thank-you, and a note to sales) (HTTP 200)",
        "Mia becomes a customer",
        "A bounce report arrives for Carl's ask (read from the reply mailbox; suppressed) "
        "(read as bounce)",
    ):
        assert moment in out, out
    assert "open these in a browser" in out and "/u/" in out and "/r/" in out
    assert "who got what" in out and "referral funnel" in out
    assert "converted 1" in out
    files = sorted((out_dir / "mail").glob("*.eml"))
    assert len(files) >= 10
    subjects = {
        str(email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["Subject"])
        for f in files
    }
    assert any("Mia" in s for s in subjects)  # the thank-you names the friend
    assert "Good news about your introduction" in subjects  # the reward, on conversion
    assert not any(f.name.endswith("old.address@example.com.eml") for f in files)  # bounced
    # Layla's reply reached the owner, Tom's 10 reached sales; Budi got nothing after his ask.
    by_recipient = [f.name.split("-", 1)[1].removesuffix(".eml") for f in files]
    assert "owner@acme.example" in by_recipient and "sales@acme.example" in by_recipient
    assert by_recipient.count("budi.santoso@example.co.id") == 1
    assert by_recipient.count("layla.haddad@example.sa") == 1
