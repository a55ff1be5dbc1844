"""``/codec/encode`` and ``/codec/decode``: the remote codec the Temporal Web UI (and ``temporal``
CLI's ``--codec-endpoint``) calls to show Perseus' encrypted payloads in clear to people allowed to.

The body is Temporal's JSON form of ``Payloads`` (``{"payloads": [{"metadata": {...}, "data": ...}]}``,
bytes in base64), answered in the same form. Only when the API holds ``PERSEUS_PAYLOAD_KEY``;
otherwise 404. Every call needs an API key (``Authorization: Bearer``), unless
``PERSEUS_CODEC_ALLOW_ANONYMOUS=1`` — which ``perseus dev`` sets for its loopback-only API, since
the dev server's Web UI has no way to send one. Browsers may call it from the origins in
``PERSEUS_CODEC_CORS_ORIGINS`` (the Web UI's), with the preflight the UI needs. A ``Host`` that is
not a name this API is served under, or an ``Origin`` that is neither, is refused (403).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from perseus.api.auth import bearer, require_api_key
from perseus.api.deps import CatalogDep
from perseus.codec import EncryptionCodec, parse_keys
from perseus.config import Settings
from perseus.errors import PayloadKeyError

log = logging.getLogger(__name__)

#: A Web UI page decodes one history's payloads per call; anything larger is not a UI request.
MAX_BODY_BYTES = 4 * 1024 * 1024
_ALLOW_HEADERS = "Content-Type, X-Namespace, Authorization"


#: What an API bound to every interface may be called by: any name (then a key is needed anyway).
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def served_names(api_host: str) -> frozenset[str] | None:
    """The host names a browser may use for this API: the configured address and the loopback
    names; None when it listens on every interface (any name; /codec then always needs a key)."""
    if api_host in _WILDCARDS:
        return None
    return frozenset({api_host.lower().strip("[]"), "127.0.0.1", "localhost", "::1"})


def host_name_of(authority: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``, lower-cased; what follows a path is ignored."""
    authority = authority.split("/", 1)[0].strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def codec_router(settings: Settings) -> APIRouter:
    """The /codec routes for these settings (the key is parsed once, here)."""
    router = APIRouter(prefix="/codec", include_in_schema=False)
    key = settings.payload_key
    codec = EncryptionCodec(parse_keys(key.get_secret_value())) if key is not None else None
    origins = set(settings.codec_cors_origins)
    hosts = served_names(settings.api_host)

    def same_site(request: Request) -> None:
        """Refuse a request whose ``Host`` is not a name this API is served under (DNS rebinding: a
        page on evil.example, its name pointed at 127.0.0.1, would otherwise read decrypted
        payloads), or whose ``Origin`` is neither this API nor a configured Web UI."""
        host = host_name_of(request.headers.get("host", ""))
        if hosts is not None and host not in hosts:
            log.info(
                "codec: refused a request for host %r (served as %s)", host[:100], ", ".join(sorted(hosts))
            )
            raise HTTPException(403, "this API is not served under that host name")
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            if hosts is None or host_name_of(origin.split("://", 1)[-1]) not in hosts:
                log.info("codec: refused a request from origin %r", origin[:100])
                raise HTTPException(403, "this origin may not call the codec")

    def cors(request: Request, response: Response) -> None:
        origin = request.headers.get("origin")
        if origin is not None and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            response.headers["Vary"] = "Origin"

    async def authorised(request: Request, catalog: CatalogDep) -> None:
        same_site(request)
        if settings.codec_allow_anonymous:
            return
        await require_api_key(request, catalog, await bearer(request))

    async def transform(request: Request, response: Response, encode: bool) -> Response:
        cors(request, response)
        if codec is None:
            raise HTTPException(404, "no PERSEUS_PAYLOAD_KEY on this API: it cannot decode payloads")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"at most {MAX_BODY_BYTES} bytes per call")
        try:
            payloads = json_format.Parse(raw, Payloads(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise HTTPException(400, f"not a Payloads JSON document: {exc}") from None
        try:
            out = await (codec.encode if encode else codec.decode)(payloads.payloads)
        except PayloadKeyError as exc:
            raise HTTPException(422, str(exc)) from None
        body = json_format.MessageToJson(Payloads(payloads=out))
        return Response(body, media_type="application/json", headers=dict(response.headers))

    @router.options("/{action}")
    async def preflight(request: Request, response: Response, action: str) -> Response:
        same_site(request)
        cors(request, response)
        return Response(status_code=204, headers=dict(response.headers))

    @router.post("/encode", dependencies=[Depends(authorised)])
    async def encode(request: Request, response: Response) -> Response:
        return await transform(request, response, encode=True)

    @router.post("/decode", dependencies=[Depends(authorised)])
    async def decode(request: Request, response: Response) -> Response:
        return await transform(request, response, encode=False)

    return router
