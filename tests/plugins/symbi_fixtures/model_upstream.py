"""A model provider for tests and benchmarks: a small HTTPS server speaking the OpenAI protocol (chat completions,
streamed or not, and embeddings) under a test CA generated here. It stands in for the outside world, not for Symbi.

It checks the ``Authorization`` header against the key it was given (401 otherwise) and remembers what it saw,
so a test can tell the credential was injected; ``fail_status`` makes it answer with an error instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from symbi_cli.deploy_tls import cert_pem, issue, new_ca
from symbi_cli.nats_cluster import free_port

from symbi_fixtures.pem_files import write_pem_pair


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate it signed for 127.0.0.1 and localhost: ``(ca.pem, cert.pem, key.pem)``."""
    ca_key, ca = new_ca()
    key, cert = issue(ca_key, ca, "model-provider.test", server_names=("localhost", "127.0.0.1"))
    cert_path, key_path = write_pem_pair(directory, key, cert, cert_name="server.pem", key_name="server.key")
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(cert_pem(ca))
    return ca_path, cert_path, key_path


@dataclass
class Provider:
    """What the provider answers and what it saw."""

    api_key: str
    #: Usage it reports for every chat call: (prompt_tokens, completion_tokens).
    usage: tuple[int, int] = (7, 5)
    #: Words of a reply (streamed one a chunk).
    words: tuple[str, ...] = ("hello", "from", "the", "model")
    fail_status: int = 0
    #: How long a chat call thinks before it answers; cut short once its server shuts down (nobody waits then).
    delay_s: float = 0.0
    #: Set by :func:`serving` when its server shuts down.
    closing: threading.Event = field(default_factory=threading.Event)
    authorizations: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    def _check(self, request: Request, body: dict[str, Any]) -> Response | None:
        self.calls += 1
        auth = request.headers.get("authorization", "")
        self.authorizations.append(auth)
        self.bodies.append(body)
        if auth != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
        if self.fail_status:
            return JSONResponse({"error": {"message": "provider trouble", "type": "api_error"}}, self.fail_status)
        return None

    async def _think(self) -> None:
        """Wait ``delay_s``, or until the server shuts down: a call still pending then has no caller left, and a
        server that waited it out would hold up the test's teardown for the rest of the delay."""
        await asyncio.to_thread(self.closing.wait, self.delay_s)

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        refused = self._check(request, body)
        if refused is not None:
            return refused
        if self.delay_s:
            await self._think()
        prompt, completion = self.usage
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(self.words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(self.words):
                chunk = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}
                    ],
                }
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            if include_usage:
                last = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": created,
                        "model": body["model"], "choices": [],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                  "total_tokens": prompt + completion}}  # fmt: skip
                yield b"data: " + json.dumps(last).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        body = json.loads(await request.body())
        refused = self._check(request, body)
        if refused is not None:
            return refused
        given = body.get("input")
        inputs = [given] if isinstance(given, str) else list(given or [])
        data = [{"object": "embedding", "index": i, "embedding": [0.125] * 8} for i in range(len(inputs))]
        tokens = sum(len(str(x).split()) for x in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _config(provider: Provider, cert: Path, key: Path, port: int) -> uvicorn.Config:
    """``provider`` over HTTPS on 127.0.0.1:``port``, quietly."""
    return uvicorn.Config(
        provider.app(),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


@contextmanager
def serving(provider: Provider, cert: Path, key: Path, port: int | None = None) -> Iterator[str]:
    """Serve ``provider`` over HTTPS on 127.0.0.1 in a thread of its own; yields its base URL (``…/v1``)."""
    port = port or free_port()
    server = uvicorn.Server(_config(provider, cert, key, port))
    thread = threading.Thread(target=server.run, name="model-provider", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test model provider did not start")
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}/v1"
    finally:
        provider.closing.set()
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    """``python model_upstream.py <port> <tls dir> <api key>``: serve until killed (benchmarks run it apart)."""
    import sys

    port, directory, key = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    cert, private = directory / "server.pem", directory / "server.key"
    uvicorn.Server(_config(Provider(api_key=key), cert, private, port)).run()


if __name__ == "__main__":
    main()
