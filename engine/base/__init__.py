"""What every layer shares: the injected clock and the exception tree."""
