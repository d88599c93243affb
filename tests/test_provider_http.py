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
