"""The durable store: SQLAlchemy models, migrations and the database handle."""
