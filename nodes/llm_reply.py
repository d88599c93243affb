"""What every streaming LLM node does to its reply before a voice says it: whole words, no markdown.

Not a node type: a helper shared by ``llm.local`` and ``llm.groq`` / ``llm.openai_compatible``, so that a
reply streamed token by token reaches the TTS the same way whatever model wrote it: markdown symbols a
voice should not read out (``*``, ``#``, backticks) dropped, whitespace (newlines too) folded into single
spaces, and only whole words sent on (a piece ends at a space), the rest at the end of the stream.
"""

from __future__ import annotations

import re

_MARKDOWN = str.maketrans("", "", "*#`")
_SPACES = re.compile(r"\s+")


class SpokenWords:
    """Buffers one reply's streamed text and hands out the words that are ready to be said."""

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, text: str | None, said: list[str]) -> str:
        """Add ``text`` (``None``: the stream has ended) and return the next piece to say ('' if none yet).

        ``said`` is what has been said of this reply so far: no leading space at its start, nor a second
        one after a piece that ended in a space."""
        if text is not None:
            pending = _SPACES.sub(" ", self.pending + text.translate(_MARKDOWN))
            if not said:
                pending = pending.lstrip()
            elif said[-1].endswith(" "):
                pending = pending.lstrip(" ")
            self.pending = pending
        piece, self.pending = _words(self.pending, final=text is None)
        return piece


def _words(pending: str, final: bool) -> tuple[str, str]:
    """Split buffered text into (word-ish piece ready to send, rest). A piece ends at whitespace."""
    if final:
        return pending, ""
    cut = pending.rfind(" ")
    if cut <= 0:
        return "", pending
    return pending[: cut + 1], pending[cut + 1 :]
