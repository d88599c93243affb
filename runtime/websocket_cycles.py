"""Lets reference counting free a closed websockets connection, server or client side.

websockets' Sans-I/O protocol parses with a generator that holds the protocol. Once the stream has
ended the generator stays suspended at its last ``yield``, and after an abnormal end the protocol
also keeps the parser's exception, whose traceback holds the parser's frame; and a server's
``select_subprotocol`` callback is bound to its protocol through a closure over the connection.
Cycles that only a full collection frees. The server makes full collections rare
(AgentServer.preload), so under churn closed connections piled up between them, with their buffers
and compression state: about 10 MB a minute at 50 sessions (experiments/soak.py). Called once the
connection is lost, when nothing steps the parser again.
"""

from __future__ import annotations

from websockets.protocol import Protocol


def release_closed(protocol: Protocol) -> None:
    vars(protocol).pop("select_subprotocol", None)  # the handshake is long over
    protocol.parser.close()
    if protocol.parser_exc is not None:
        protocol.parser_exc.__traceback__ = None  # read only as a later error's cause, not for its stack
