"""``python -m engine demo``: the whole program on sample data, embedded (SQLite, an SMTP sink
that keeps every email as a file, the tracking app), with an accelerated clock."""
