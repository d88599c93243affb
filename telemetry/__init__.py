"""Observability: a trace per turn, per-turn metrics (JSONL and Prometheus), and the figures of
ARCHITECTURE.md §5 for every turn, derived from what a session already shows (frames, events, scopes)."""
