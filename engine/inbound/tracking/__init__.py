"""The tracking and landing HTTP app: opens, clicks, unsubscribe, NPS answers, referral and
partner forms, and the events API. See ``engine.inbound.tracking.app`` for the endpoints."""
