"""``python -m ah.cli``: the same as the ``ah`` command."""

from ah.cli.main import app

app(prog_name="ah")
