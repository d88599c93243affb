"""The ``ah`` command line."""
