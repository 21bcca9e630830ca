"""The command line: ``python -m engine ...`` (``main`` parses, configures, runs, reports)."""

from engine.cli.main import entry, main

__all__ = ["entry", "main"]
