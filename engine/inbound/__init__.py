"""What comes back: the tracking and landing app, the events API, replies over IMAP."""
