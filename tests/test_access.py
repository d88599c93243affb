"""Who may connect: public, API key, signed URLs (HMAC, expiring, single-use), an Origin allow-list;
per server, or per graph with its `access:` block. Each refusal is shown."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ah.runtime.graph_loader import check_graph
from ah.server.access import AccessMode, AccessPolicy
from tests.server_helpers import (
    AGENT,
    AH,
    ROOT,
    STEP_S,
    open_conversation,
    serving,
    text_turn,
    voice_graphs,
    voice_variant,
    ws_url,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the SDK imports websockets' legacy client
    from elevenlabs import ElevenLabs
    from elevenlabs.conversational_ai.conversation import Conversation, ConversationInitiationData

KEY = "sk_test_0123456789"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def refused(url: str, **kwargs: Any) -> tuple[int, str]:
    """Connect expecting a refusal of the upgrade; the HTTP status and body."""
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=STEP_S, **kwargs)
    response = info.value.response
    return response.status_code, response.body.decode().strip()


async def admitted(url: str, **kwargs: Any) -> None:
    """Connect and hold a short conversation."""
    ws = await open_conversation(url, **kwargs)
    assert "sunny" in await text_turn(ws)
    await ws.close()


async def signed_url(port: int, agent_id: str = AGENT, key: str | None = KEY) -> httpx.Response:
    headers = {"xi-api-key": key} if key is not None else {}
    async with httpx.AsyncClient() as http:
        return await http.get(
            f"http://127.0.0.1:{port}/v1/convai/conversation/get-signed-url",
            params={"agent_id": agent_id},
            headers=headers,
        )


def test_public_lets_anyone_in() -> None:
    async def main() -> None:
        async with serving() as server:
            await admitted(ws_url(server.port))

    run(main())


def test_api_key_mode() -> None:
    policy = AccessPolicy(mode=AccessMode.API_KEY, api_keys=frozenset({KEY}))

    async def main() -> None:
        async with serving(access=policy) as server:
            url = ws_url(server.port)
            assert await refused(url) == (401, "missing xi-api-key header")
            assert await refused(url, additional_headers={"xi-api-key": "sk_wrong"}) == (
                401,
                "invalid xi-api-key",
            )
            await admitted(url, additional_headers={"xi-api-key": KEY})
            # A server-side app may also hand a browser a signed URL.
            await admitted((await signed_url(server.port)).json()["signed_url"])

    run(main())


def test_signed_mode() -> None:
    now = [1_000_000.0]
    policy = AccessPolicy(
        mode=AccessMode.SIGNED, api_keys=frozenset({KEY}), signed_url_ttl_s=60, clock=lambda: now[0]
    )

    async def main() -> None:
        async with serving(access=policy) as server:
            port = server.port
            # Minting a signed URL needs the key.
            r = await signed_url(port, key=None)
            assert (r.status_code, r.json()) == (401, {"detail": "missing xi-api-key header"})
            r = await signed_url(port, key="sk_wrong")
            assert (r.status_code, r.json()) == (401, {"detail": "invalid xi-api-key"})
            r = await signed_url(port)
            assert r.status_code == 200
            url = r.json()["signed_url"]
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc, parts.path) == (
                "ws",
                f"127.0.0.1:{port}",
                "/v1/convai/conversation",
            )
            query = parse_qs(parts.query)
            assert query["agent_id"] == [AGENT] and query["conversation_signature"][0]

            # Without a signature (even with the key) no one gets in.
            status, body = await refused(ws_url(port), additional_headers={"xi-api-key": KEY})
            assert status == 401 and "requires a signed URL" in body

            # The URL works once, verbatim plus the SDKs' own parameters ...
            await admitted(url + "&source=python_sdk&version=2.78.0")
            # ... and only once.
            assert await refused(url) == (401, "conversation_signature was already used")

            # It expires.
            late = (await signed_url(port)).json()["signed_url"]
            now[0] += 61
            assert await refused(late) == (401, "conversation_signature has expired")

            # It cannot be altered ...
            sig = parse_qs(urlsplit((await signed_url(port)).json()["signed_url"]).query)[
                "conversation_signature"
            ][0]
            tampered = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
            status, body = await refused(ws_url(port, conversation_signature=tampered))
            assert (status, body) == (401, "invalid conversation_signature")
            assert await refused(ws_url(port, conversation_signature="garbage")) == (
                401,
                "malformed conversation_signature",
            )

    run(main())


def test_a_signature_is_for_one_agent(tmp_path: Path) -> None:
    graphs = voice_graphs(voice_variant(tmp_path, "alpha"), voice_variant(tmp_path, "beta"))
    policy = AccessPolicy(mode=AccessMode.SIGNED, api_keys=frozenset({KEY}))

    async def main() -> None:
        async with serving(graphs, access=policy) as server:
            url = (await signed_url(server.port, "alpha")).json()["signed_url"]
            sig = parse_qs(urlsplit(url).query)["conversation_signature"][0]
            status, body = await refused(ws_url(server.port, "beta", conversation_signature=sig))
            assert (status, body) == (401, "conversation_signature was issued for another agent")
            await admitted(url)  # refusing it elsewhere did not use it up

    run(main())


def test_origin_allow_list() -> None:
    policy = AccessPolicy(allowed_origins=frozenset({"https://app.example.com"}))

    async def main() -> None:
        async with serving(access=policy) as server:
            url = ws_url(server.port)
            status, body = await refused(url, origin="https://evil.example.net")
            assert (status, body) == (403, "origin 'https://evil.example.net' is not allowed")
            await admitted(url, origin="https://app.example.com")
            await admitted(url)  # no Origin: not a browser, the allow-list does not apply

    run(main())


def test_access_per_graph(tmp_path: Path) -> None:
    graphs = voice_graphs(
        voice_variant(tmp_path, "open"),
        voice_variant(tmp_path, "private", top={"access": {"mode": "signed"}}),
        voice_variant(
            tmp_path, "embedded", top={"access": {"allowed_origins": ["https://shop.example.com"]}}
        ),
    )
    # The server is public and has a key (to mint signed URLs); graphs tighten it for themselves.
    policy = AccessPolicy(api_keys=frozenset({KEY}))

    async def main() -> None:
        async with serving(graphs, access=policy) as server:
            port = server.port
            await admitted(ws_url(port, "open"), origin="https://anywhere.example.org")
            status, body = await refused(ws_url(port, "private"))
            assert status == 401 and "requires a signed URL" in body
            await admitted((await signed_url(port, "private")).json()["signed_url"])
            status, body = await refused(ws_url(port, "embedded"), origin="https://anywhere.example.org")
            assert (status, body) == (403, "origin 'https://anywhere.example.org' is not allowed")
            await admitted(ws_url(port, "embedded"), origin="https://shop.example.com")
            assert "private" in server.banner() and "(signed)" in server.banner()

    run(main())


def test_access_block_is_checked_and_inherited(tmp_path: Path) -> None:
    bad = voice_variant(tmp_path, "bad", top={"access": {"mode": "secret"}})
    graph, issues = check_graph(bad)
    assert graph is None
    assert any(i.path == "access.mode" for i in issues), [i.format() for i in issues]
    base = voice_variant(tmp_path, "base", top={"access": {"mode": "api_key"}})
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"extends: {base.name}\ngraph: variant\nnodes:\n  llm: {{params: {{echo: true}}}}\n")
    graph, issues = check_graph(variant)
    assert graph is not None, [i.format() for i in issues]
    assert graph.data.get("access") == {"mode": "api_key"}


def test_ah_run_refuses_a_private_graph_without_api_keys(tmp_path: Path) -> None:
    voice_variant(tmp_path, "private", top={"access": {"mode": "signed"}})
    proc = subprocess.run(
        [*AH, "run", str(tmp_path), "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "agent 'private' has access mode 'signed', which needs at least one API key" in proc.stderr


def test_official_python_sdk_requires_auth_uses_a_signed_url() -> None:
    policy = AccessPolicy(mode=AccessMode.SIGNED, api_keys=frozenset({KEY}))

    def talk(port: int, key: str) -> list[str]:
        replies: list[str] = []
        got = threading.Event()
        conversation = Conversation(
            ElevenLabs(api_key=key, base_url=f"http://127.0.0.1:{port}"),
            AGENT,
            requires_auth=True,
            config=ConversationInitiationData(dynamic_variables={"user_name": "Ana"}),
            callback_agent_response=lambda text: (replies.append(text), got.set()),
        )
        conversation.start_session()
        try:
            for _ in range(int(STEP_S / 0.01)):
                if conversation._ws is not None and conversation._conversation_id is not None:
                    break
                threading.Event().wait(0.01)
            conversation.send_user_message("What is the weather like?")
            assert got.wait(STEP_S), "no agent_response"
        finally:
            conversation.end_session()
            conversation.wait_for_session_end()
        return replies

    async def main() -> None:
        async with serving(access=policy) as server:
            replies = await asyncio.to_thread(talk, server.port, KEY)
            assert replies and "sunny" in replies[0]
            assert server.started_sessions == 1
            # With a wrong key there is no signed URL, so no session.
            with pytest.raises(Exception, match="401"):
                await asyncio.to_thread(talk, server.port, "sk_wrong")
            assert server.started_sessions == 1

    run(main())
