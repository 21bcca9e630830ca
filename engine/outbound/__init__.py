"""What the engine tells others: webhooks and notes to the team."""
