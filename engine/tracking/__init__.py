"""The tracking and landing HTTP app: opens, clicks, unsubscribe, NPS answers, referral and
partner forms, and the events API. See ``engine.tracking.app`` for the endpoints."""

from engine.tracking.app import TrackingError, build_app, serve_tracking
from engine.tracking.links import MessageLinks, message_links

__all__ = ["MessageLinks", "TrackingError", "build_app", "message_links", "serve_tracking"]
