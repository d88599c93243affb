"""The httpx client the provider SDKs get (``ah.nodes.cloud.provider_http_client``): an upload that is in
memory leaves in one write, not one per multipart piece (each write is a turn of a loaded event loop);
a body streamed from a file is left to httpx; what reaches the server is the same bytes either way."""

from __future__ import annotations

import asyncio
import io

import httpx

from ah.nodes.cloud import OneWriteBody


class _Recorder(httpx.AsyncBaseTransport):
    """The transport under test's inner one: records the body's pieces as httpcore would send them."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        self.pieces = [piece async for piece in request.stream]
        return httpx.Response(200, json={"text": "ok"})


def _pieces(**request: object) -> list[bytes]:
    inner = _Recorder()

    async def main() -> None:
        async with httpx.AsyncClient(transport=OneWriteBody(inner)) as client:
            await client.post("http://fake/openai/v1/audio/transcriptions", **request)  # type: ignore[arg-type]

    asyncio.run(main())
    return inner.pieces


def test_an_upload_of_bytes_is_one_piece() -> None:
    wav = bytes(range(256)) * 400
    data = {"model": "whisper-large-v3-turbo", "response_format": "verbose_json"}
    pieces = _pieces(files={"file": ("audio.wav", wav, "audio/wav")}, data=data)
    assert len(pieces) == 1
    body = pieces[0]
    assert wav in body and b'name="model"' in body and b"whisper-large-v3-turbo" in body
    assert body.startswith(b"--") and body.rstrip().endswith(b"--")


def test_an_upload_from_a_file_is_left_to_httpx() -> None:
    pieces = _pieces(files={"file": ("audio.wav", io.BytesIO(b"RIFF" + bytes(70_000)), "audio/wav")})
    assert len(pieces) > 1  # streamed as httpx streams it (reading it whole would block the loop)


def test_a_json_body_is_untouched() -> None:
    pieces = _pieces(json={"model": "llama-3.1-8b-instant", "messages": []})
    assert pieces == [b'{"model":"llama-3.1-8b-instant","messages":[]}']


def test_the_chat_stream_sends_what_the_sdks_create_sends() -> None:
    """``groq_chat_stream`` skips the SDK's parameter transform; the request must be the one
    ``chat.completions.create`` makes (the same path, headers and JSON body) and its stream the same."""
    import json

    import groq

    from ah.nodes.llm_cloud import groq_chat_stream

    sent: list[httpx.Request] = []
    sse = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        b'[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\ndata: [DONE]\n\n'
    )

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    body = {
        "model": "llama-3.1-8b-instant",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 120,
    }

    async def main() -> list[list[str]]:
        client = groq.AsyncGroq(
            api_key="k",
            base_url="http://fake",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(answer)),
        )
        texts = []
        for stream in (await client.chat.completions.create(**body), await groq_chat_stream(client, body)):  # type: ignore[call-overload]
            texts.append([c.choices[0].delta.content async for c in stream])
        return texts

    via_create, via_post = asyncio.run(main())
    assert via_create == via_post == ["Hi"]
    a, b = sent
    assert (a.method, a.url) == (b.method, b.url)
    assert json.loads(a.content) == json.loads(b.content) == body
    skip = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    assert {k: v for k, v in a.headers.items() if k not in skip} == {
        k: v for k, v in b.headers.items() if k not in skip
    }
