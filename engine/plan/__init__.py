"""Due work: enrollment, re-checks, and steps turned into outbox rows; explain and simulate."""
