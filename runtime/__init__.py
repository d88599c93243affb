"""The graph engine: frames, bounded channels, cancellation scopes, the node SDK, graph files, sessions.

It knows no node kind, no protocol and no provider (ARCHITECTURE.md §7): it runs graphs of ports
and channels. Nodes import what they need from :mod:`ah.runtime.sdk`.
"""
