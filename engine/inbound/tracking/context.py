"""What the tracking app is built from, kept apart from the app itself so that building it
(``engine.wiring``) does not import Starlette and uvicorn for commands that never serve."""

from __future__ import annotations

from dataclasses import dataclass

from engine.base.clock import Clock
from engine.mail.tokens import Links
from engine.program.settings import SenderSettings, TrackingSettings
from engine.store.db import Database


@dataclass(frozen=True, kw_only=True)
class TrackingContext:
    """What the tracking app needs: the store, the clock, the links of the emails (their
    signer), ``[tracking]`` and the sender's name on pages."""

    db: Database
    clock: Clock
    links: Links
    tracking: TrackingSettings
    sender: SenderSettings
