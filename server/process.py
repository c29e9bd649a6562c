"""Start and stop a server process (``python -m server``) and wait until it is healthy.

Used by the test fixtures and by ``make bench`` when no ``URL`` is given.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    model: str
    log: Path
    proc: subprocess.Popen

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, **kw):  # noqa: ANN201
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="test", max_retries=0, **kw)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start_server(
    model: Path,
    log: Path,
    extra: list[str] | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Served:
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(extra or []),
    ]
    fh = log.open("w")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    served = Served(f"http://127.0.0.1:{port}", str(model), log, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{served.log_tail()}")
        try:
            if httpx.get(served.url + "/health", timeout=2).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(served)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{served.log_tail()}")


def stop_server(served: Served) -> None:
    if served.proc.poll() is None:
        os.killpg(served.proc.pid, signal.SIGINT)
        try:
            served.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(served.proc.pid, signal.SIGKILL)
            served.proc.wait(10)
