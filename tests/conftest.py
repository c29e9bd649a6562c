"""Shared fixtures: the tiny checkpoint and one real server process per test session."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from server.process import Served, start_server, stop_server

__all__ = ["Served", "image_data_url", "image_message", "start_server", "stop_server"]


@pytest.fixture(scope="session")
def tiny_llava_dir() -> Path:
    """The default tiny LLaVA checkpoint (built on first use, then cached in build/)."""
    from decoding.testing.tiny_llava import ensure_tiny_llava

    return ensure_tiny_llava()


@pytest.fixture(scope="session")
def served(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real server (``python -m server``) on the tiny checkpoint, all strategies on."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(tiny_llava_dir, log, ["--max-request-bytes", str(4 * 1024 * 1024)])
    yield srv
    stop_server(srv)


def image_data_url(img) -> str:  # noqa: ANN001
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(img, text: str) -> list[dict]:  # noqa: ANN001
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(img)}},
                {"type": "text", "text": text},
            ],
        }
    ]
