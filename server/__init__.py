"""The ``ah`` server: accepts connections and starts one session per connection.

What a message means is the protocol nodes' business (``ah.nodes.elevenlabs``); the server routes
HTTP, checks who may connect, counts sessions and drains on SIGTERM.
"""
