"""``ah ab``: two graph variants played on the same recorded conversations, turn by turn, compared
with paired bootstrap confidence intervals, reported as Markdown and as an HTML page with plots."""
