"""The tracking and landing HTTP app: opens, clicks, unsubscribe, NPS answers, referral and
partner forms, and the events API. See ``engine.inbound.tracking.app`` for the endpoints."""

from engine.inbound.tracking.app import TrackingContext, TrackingError, build_app, serve_tracking
from engine.inbound.tracking.links import MessageLinks, message_links

__all__ = [
    "MessageLinks",
    "TrackingContext",
    "TrackingError",
    "build_app",
    "message_links",
    "serve_tracking",
]
