"""From outbox row to SMTP: rendering (Jinja2 inside MJML, compiled once) and the sender."""
