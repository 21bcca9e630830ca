"""Referral campaign engine: sequences -> plan -> outbox -> send -> events."""

__version__ = "0.1.0"
