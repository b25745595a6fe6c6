"""QuietServer: a second between housekeeping ticks, a stop signal still ends it at once, a failed start exits 3."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from symbi_fixtures.runtimes import take_free_port

APP = textwrap.dedent(
    """
    import sys
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI

    from symbi_common.quiet_server import QuietServer

    @asynccontextmanager
    async def lifespan(app):
        if sys.argv[2] == "fail":
            raise RuntimeError("start-up refused")
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    server = QuietServer(uvicorn.Config(app, port=int(sys.argv[1]), log_config=None, lifespan="on"))
    server.run()
    sys.exit(0 if server.started else 3)
    """
)


def _voluntary_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], int]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = take_free_port()
    return subprocess.Popen([sys.executable, str(script), str(port), mode]), port


def test_serves_wakes_rarely_and_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    proc, port = _start(tmp_path, "ok")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert r.json() == "pong"
        assert r.headers["date"]  # on_tick's Date header is set
        # Idle: uvicorn's own loop blocks ten times a second; this one about once.
        before = _voluntary_switches(proc.pid)
        time.sleep(3.0)
        woken = _voluntary_switches(proc.pid) - before
        assert woken < 15, f"{woken} wake-ups in 3 s of idling"
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        # Not the one-second tick: the signal wakes the loop.
        assert time.monotonic() - stop_at < 0.9
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_start_ends_the_process(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, "fail")
    assert proc.wait(30) == 3
