"""Pydantic models of a graph file: the user's interface, and the source of ``graph.schema.json``."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ah.runtime.channel import EdgePolicy

EDGE_RE = re.compile(
    r"^\s*(?P<src>[A-Za-z_][\w-]*)\.(?P<sp>\w+)\s*->\s*(?P<dst>[A-Za-z_][\w-]*)\.(?P<dp>\w+)\s*$"
)
EDGE_PATTERN = r"^\s*[A-Za-z_][\w-]*\.\w+\s*->\s*[A-Za-z_][\w-]*\.\w+\s*$"
NODE_ID_PATTERN = r"^[A-Za-z_][\w-]*$"

DEFAULT_CAPACITY = 32


class NodeSpec(BaseModel):
    """One node: its registered type and the params its params model validates."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="A registered node type (`ah nodes` lists them), e.g. `vad.silero`.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Validated by the node type's params model."
    )
    description: str = ""


EdgeString = Annotated[
    str,
    Field(
        pattern=EDGE_PATTERN, description="`node.port -> node.port`, with the default policy and capacity."
    ),
]


class EdgeSpec(BaseModel):
    """An edge with options. The short form is the string `node.port -> node.port`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    edge: EdgeString = Field(description="`node.port -> node.port`")
    policy: EdgePolicy = Field(
        EdgePolicy.BLOCK,
        description="What a full channel does: `block` (lossless backpressure) or `drop_oldest` (live audio).",
    )
    capacity: int = Field(DEFAULT_CAPACITY, ge=1, le=100_000, description="Frames the channel holds.")
    feedback: bool = Field(False, description="Declares that this edge closes a cycle on purpose.")


class AccessSpec(BaseModel):
    """Who may connect to this graph when it is served; overrides the server's settings. The runtime
    does not read it: the server (``ah run``) does."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["public", "api_key", "signed"] | None = Field(
        None,
        description="`public` (anyone), `api_key` (an `xi-api-key` header, for server-side apps) or `signed` "
        "(signed URLs only: HMAC-signed, expiring, single-use). Unset: the server's `--access`.",
    )
    allowed_origins: list[str] | None = Field(
        None,
        description="Browser origins allowed to connect, e.g. `https://app.example.com`; an empty list allows "
        "any origin. Unset: the server's `--allowed-origin`.",
    )


class GraphFile(BaseModel):
    """A graph file. A variant names a base with `extends:` and overrides nodes or adds edges."""

    model_config = ConfigDict(extra="forbid", title="ah graph")

    graph: str | None = Field(None, description="The graph's name; also its agent id when served.")
    description: str = ""
    version: str = Field("1", description="The graph author's own version label.")
    extends: str | None = Field(
        None,
        description="Path of a base graph, relative to this file. Nodes listed here override the base's "
        "(params merge; a new `type` replaces the node); `null` removes a node; edges are added.",
    )
    nodes: dict[Annotated[str, Field(pattern=NODE_ID_PATTERN)], NodeSpec | None] = Field(default_factory=dict)
    edges: list[EdgeString | EdgeSpec] = Field(default_factory=list)
    access: AccessSpec | None = Field(
        None, description="Who may connect when this graph is served (overrides the server's settings)."
    )
