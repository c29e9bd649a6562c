"""Shared fixtures: the tiny checkpoint and one real server process per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from decoding.testing.synthetic import chat_messages as image_message
from decoding.testing.synthetic import data_url as image_data_url
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


@pytest.fixture
def llava_family(monkeypatch: pytest.MonkeyPatch):
    """Start-up checks on a checkpoint name that is not on disk: the LLaVA-1.5 family."""
    from decoding.engine import families, frontend

    monkeypatch.setattr(frontend, "model_family", lambda args: families.LLAVA_15)
    return families.LLAVA_15
