"""The tracking app's routes, one module per group: ``clicks`` (click redirect, honeypot),
``unsubscribe``, ``nps``, ``referral`` (the personal referral page), ``email_forms`` (intro,
partner, testimonial) and ``service`` (health, the events API). Each has ``routes(app)``; the
paths of the links in emails come from ``engine.mail.tokens.LINK_PATHS``."""
