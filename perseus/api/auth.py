"""Bearer authentication against the active rows of ``api_keys``.

A key is a UUID. It is looked up by value (an index probe: its timing reveals nothing useful about a
122-bit random value) and the stored value is then compared with :func:`hmac.compare_digest`, so no
byte-by-byte comparison of secrets happens in Python. Revocation takes effect on the next request:
keys are not cached.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from perseus.api.deps import CatalogDep
from perseus.errors import Unauthorized

# auto_error=False: a missing header must give our JSON 401, not FastAPI's default body. The scheme
# object also puts the "Authorize" button into the OpenAPI docs.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `perseus apikey create NAME` (or `perseus dev`'s, in `{data dir}/api.key`).",
)


async def require_api_key(
    request: Request,
    catalog: CatalogDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The calling key's name; raises :class:`Unauthorized` otherwise."""
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    try:
        presented = str(uuid.UUID(credentials.credentials.strip()))
    except ValueError:
        raise Unauthorized("invalid API key") from None
    found = await catalog.check_api_key(presented)
    if found is None or not hmac.compare_digest(found[0].encode(), presented.encode()):
        raise Unauthorized("invalid or revoked API key")
    request.state.api_key_name = found[1]
    return found[1]


ApiKeyDep = Annotated[str, Depends(require_api_key)]
