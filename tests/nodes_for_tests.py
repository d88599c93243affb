"""Node types used only by the graph-file tests (registered directly, never as entry points)."""

from __future__ import annotations

from pydantic import Field

from ah.runtime.sdk import Node, Output, Params, TextFrame


class WordsParams(Params):
    words: list[str] = Field(default_factory=lambda: ["hello"], description="Words to send, one per frame.")


class TextSource(Node[WordsParams]):
    """Sends each of its words as a TextFrame, then ends."""

    summary = "send words as text frames"
    params_model = WordsParams
    text = Output(TextFrame, doc="one word per frame")

    async def run(self) -> None:
        for word in self.params.words:
            await self.text.send(TextFrame(word))
