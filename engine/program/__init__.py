"""What people write: settings.toml, sequences (model, loader, schema), audience rules,
send windows and durations."""
