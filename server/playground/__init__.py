"""``GET /playground``: a page that runs strategies side by side on one image and prompt.

Static files shipped in the package (``static/``), no third-party scripts or fonts: the
page talks only to this server (``/v1/decoding/strategies`` for the parameter forms,
``/v1/models``, and streamed ``/v1/chat/completions`` per ticked strategy).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"app.js": "text/javascript", "style.css": "text/css"}


def install(app: FastAPI) -> None:
    page = (STATIC / "index.html").read_text()

    @app.get("/playground", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in FILES:
            return HTMLResponse("not found", status_code=404)
        return FileResponse(STATIC / name, media_type=FILES[name])
