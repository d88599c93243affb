"""The node SDK: a node is typed ports, a params model and one async ``run`` method.

Nodes see the runtime only through their ports and a :class:`NodeContext` (clock, logger, tracer,
scopes, params, session attachments). They never see another node or the server, so a node can be
tested alone and swapped in YAML.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from ah.runtime.clock import Clock
from ah.runtime.ports import Input, InputPort, Output, OutputPort, PortSpec
from ah.runtime.scopes import ScopeRegistry


class Params(BaseModel):
    """Base for node params models: unknown keys are errors, so a typo in YAML is caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=Params)


@dataclass(slots=True)
class SessionEvent:
    """Something a session reports to whoever runs it (server, CLI, tests)."""

    kind: str
    node: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class DoctorCheck:
    """One line of ``ah doctor``: a node's key or endpoint is fine (``ok``) or what is wrong with it."""

    ok: bool
    message: str


@dataclass(slots=True)
class NodeContext:
    session_id: str
    node_id: str
    clock: Clock
    logger: logging.Logger
    tracer: trace.Tracer
    scopes: ScopeRegistry
    #: Per-session resources shared by the nodes that need them (the client connection a transport
    #: node reads, a protocol's event-id counter). Set by whoever starts the session.
    attachments: dict[str, Any]
    emit: Callable[[SessionEvent], None]
    #: Replace some params of another node before it is set up (client overrides at conversation
    #: start). Validated by that node's params model; raises ``ValueError`` with the reason.
    override_params: Callable[[str, Mapping[str, Any]], None]
    #: End the whole session cleanly (the client went away): every node is cancelled, the result is ok.
    request_stop: Callable[[], None]


class Node(Generic[P]):
    """Base class of every node type.

    Subclasses declare ``Input``/``Output`` class attributes, an optional ``params_model`` (a
    :class:`Params` subclass, validated from the graph file) and ``async def run(self)``. When
    ``run`` returns, the node's outputs close (end-of-stream flows downstream); when it raises, its
    session ends with an error event naming the node.
    """

    params_model: ClassVar[type[Params]] = Params
    #: One line shown by ``ah nodes``; the class docstring is the long form.
    summary: ClassVar[str] = ""
    inputs: ClassVar[dict[str, PortSpec]] = {}
    outputs: ClassVar[dict[str, PortSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inputs: dict[str, PortSpec] = {}
        outputs: dict[str, PortSpec] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Input):
                    inputs[name] = value.spec
                elif isinstance(value, Output):
                    outputs[name] = value.spec
        cls.inputs = inputs
        cls.outputs = outputs

    def __init__(self, params: P, ctx: NodeContext, ports: Mapping[str, InputPort[Any] | OutputPort[Any]]):
        self.params: P = params
        self.ctx = ctx
        self._ports = dict(ports)

    @property
    def id(self) -> str:
        return self.ctx.node_id

    async def run(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.run")

    @classmethod
    async def preload(cls, params: Params) -> None:
        """Called once per process for each node of a served graph, before any client connects:
        load shared models here so the first conversation does not pay for it. Default: nothing."""

    @classmethod
    async def doctor(cls, params: Params) -> list[DoctorCheck]:
        """``ah doctor``: check what this node needs from outside (keys, endpoints) without running a
        session, one line per check. Default: nothing to check."""
        return []

    async def setup(self) -> None:
        """Called for every node before any node runs: load models, open connections.

        A failure here fails the session at start, never mid-conversation.
        """
