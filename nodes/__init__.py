"""Node types shipped with ah. Each registers through the ``ah.nodes`` entry-point group."""
