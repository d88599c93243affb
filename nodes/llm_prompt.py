"""What every LLM node does to its prompt: ``{{variables}}`` from the client, and the window of history.

Not a node type: a helper shared by ``llm.local``, ``llm.groq`` / ``llm.openai_compatible`` and
``llm.scripted``, so the protocol's dynamic variables and the history window behave the same whatever
the provider, and a missing variable is reported with the same ``error`` event everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ah.runtime.sdk import ControlFrame, OutputPort

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w]*)\s*\}\}")

Message = dict[str, str]


async def fill_variables(text: str, values: Mapping[str, object], errors: OutputPort[ControlFrame]) -> str:
    """``text`` with its ``{{name}}`` placeholders filled from ``values``; a placeholder without a value
    stays as written, and the client gets one ``missing_dynamic_variable`` error naming them all."""
    missing = [m for m in PLACEHOLDER.findall(text) if m not in values]
    if missing:
        await errors.send(
            ControlFrame(
                "error",
                {
                    "error_type": "missing_dynamic_variable",
                    "code": 1008,
                    "message": f"dynamic variable(s) {', '.join(sorted(set(missing)))} not provided by the client",
                },
            )
        )
    return PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)


def prompt_messages(system: str, history: list[Message], user_text: str, keep: int) -> list[Message]:
    """The system prompt, the last ``keep`` exchanges of ``history`` (each from a user message on, with
    the context notes among them) and the new user turn."""
    starts = [i for i, m in enumerate(history) if m["role"] == "user"]
    if keep == 0:
        history = []
    elif len(starts) > keep:
        history = history[starts[-keep] :]
    return [{"role": "system", "content": system}, *history, {"role": "user", "content": user_text}]
