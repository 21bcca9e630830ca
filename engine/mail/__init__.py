"""Email on the wire: addresses and MIME, signed tracking links, SMTP (transport and the
classification of its answers)."""
