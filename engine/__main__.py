from engine.cli import entry

raise SystemExit(entry())
