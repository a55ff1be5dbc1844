"""``GET /network``: the network page (DESIGN §4), plain HTML, CSS and JavaScript, no build step.

The page carries no data: its script asks for an API key once (kept in the browser's localStorage)
and reads everything from the authenticated JSON routes under ``/api/network``. So these routes are
open, and a strict Content-Security-Policy keeps the page to its own script, style and API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

STATIC = Path(__file__).with_name("static")

#: The files the page is made of, and their media types; nothing else is served from STATIC.
ASSETS = {
    "network.css": "text/css; charset=utf-8",
    "network.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the code: always revalidate, never serve a stale page.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.api_route("/network", methods=["GET", "HEAD"])
async def network_page() -> FileResponse:
    return FileResponse(STATIC / "network.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/network/")
async def network_page_slash() -> RedirectResponse:
    return RedirectResponse("/network")


@router.api_route("/network/static/{name}", methods=["GET", "HEAD"])
async def network_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no such asset: {name}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
