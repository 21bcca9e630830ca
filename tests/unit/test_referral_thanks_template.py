"""The shipped thank-you names every introduction of one form, and one friend as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.mail.tokens import Links, Signer
from engine.program.sequences import SendStep, load_sequences
from engine.program.settings import SenderSettings
from engine.send.render import Renderer

ROOT = Path(__file__).resolve().parents[2]
REF = bytes.fromhex("a1b2c3d4e5f60718293a4b5c")
SENDER = SenderSettings(postal_address="Acme Inc., 1 Main St, Springfield")


@pytest.fixture(scope="module")
def thanks() -> tuple[Renderer, SendStep]:
    loaded = load_sequences(ROOT / "sequences")
    (step,) = loaded.sequences["referral-thanks"].send_steps()
    assert isinstance(step, SendStep)
    renderer = Renderer(
        ROOT / "templates", links=Links("https://t.example.com", Signer("s")), sender=SENDER
    )
    return renderer, step


def render(thanks: tuple[Renderer, SendStep], referral: dict[str, Any]) -> tuple[str, str]:
    renderer, step = thanks
    context = {
        "contact": {"email": "ana@example.com", "first_name": "Ana"},
        "referral": referral,
        "reward": None,
        "sequence": "referral-thanks",
        "step": step.id,
    }
    out = renderer.render(step.template, step.subject_for("en"), context, locale="en", ref=REF)
    return out.subject, out.text


def test_a_form_of_two_is_thanked_for_both(thanks: tuple[Renderer, SendStep]) -> None:
    friends = [
        {"name": "Gus Green", "email": "gus@example.com"},
        {"name": None, "email": "hana@example.org"},
    ]
    subject, text = render(thanks, {"friend_name": "Gus Green", "friends": friends})
    assert subject == "Thank you for the introductions"
    assert "introducing us to Gus Green and hana@example.org." in " ".join(text.split())


def test_one_friend_is_thanked_by_name_or_as_your_friend(
    thanks: tuple[Renderer, SendStep],
) -> None:
    subject, text = render(thanks, {"friend_name": "Mia"})
    assert subject == "Thank you for introducing Mia" and "introducing us to Mia." in text
    subject, text = render(thanks, {"friends": [{"name": "Mia", "email": "m@example.com"}]})
    assert subject == "Thank you for introducing your friend"
    assert "introducing us to your friend." in " ".join(text.split())
