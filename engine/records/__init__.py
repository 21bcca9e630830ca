"""The writes every stage shares: events, suppressions, contacts, referrals, rewards,
purchases, privacy, queued notes, pauses and outbox maintenance."""
