"""Automagik Hello: a dataflow-graph runtime for real-time voice agents.

The code lives in the repository's top-level folders (``runtime/``, ``nodes/``, ``cli/``) and is
installed under this one namespace so that nothing generic lands in site-packages.
"""

__version__ = "0.1.0"
