"""Small file helpers shared by the evaluators: gzip-transparent reading and hashing.

Benchmark files are shipped gzip-compressed to keep the repository small, but their
pinned SHA-256 values are those of the original (uncompressed) bytes, so the hash that
users see matches the upstream files (see ``eval/data/pope/SHA256SUMS``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"


def read_bytes(path: str | Path) -> bytes:
    """The file's content, decompressed when the name ends in ``.gz``."""
    p = Path(path)
    raw = p.read_bytes()
    return gzip.decompress(raw) if p.name.endswith(".gz") else raw


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_json_records(text: str, *, source: str = "<text>") -> list[dict[str, Any]]:
    """Parse JSON Lines or a single JSON array of objects.

    Upstream POPE files come in both forms (COCO files are JSONL, the SEEM files are
    pretty-printed arrays) and with LF or CRLF line endings; ``str.splitlines`` and
    ``json.loads`` tolerate ``\\r`` and surrounding whitespace.
    """
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        data = json.loads(stripped)
        if not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{source}: JSON array must hold objects")
        return data
    out: list[dict[str, Any]] = []
    for n, line in enumerate(stripped.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{source}:{n}: expected a JSON object")
        out.append(rec)
    return out


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL or JSON-array file (optionally gzip-compressed)."""
    return parse_json_records(read_bytes(path).decode("utf-8"), source=str(path))


def iter_jsonl_tolerant(path: Path) -> Iterator[dict[str, Any]]:
    """Records of an append-only JSONL log, skipping a torn last line.

    A job killed mid-write can leave an incomplete final line; it is simply redone.
    """
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec
