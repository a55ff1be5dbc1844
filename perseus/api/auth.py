"""Bearer authentication against the active, unexpired rows of ``api_keys``, and scopes.

A key is a UUID. Its keyed hash (HMAC-SHA-256 under the server secret) is looked up (an index
probe: its timing reveals nothing useful about a 122-bit random value) and the stored hash is then
compared with :func:`hmac.compare_digest`. Revocation and expiry take effect on the next request:
keys are not cached. A route that changes something also needs a scope (:func:`require_scope`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from perseus.api.deps import CatalogDep
from perseus.errors import Forbidden, Unauthorized
from perseus.models import CallerKey, Scope

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
) -> CallerKey:
    """The calling key; raises :class:`Unauthorized` otherwise."""
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    try:
        presented = str(uuid.UUID(credentials.credentials.strip()))
    except ValueError:
        raise Unauthorized("invalid API key") from None
    found = await catalog.check_api_key(presented)
    if found is None:
        raise Unauthorized("invalid, expired or revoked API key")
    request.state.api_key_name = found.name
    return found


ApiKeyDep = Annotated[CallerKey, Depends(require_api_key)]


def require_scope(needed: Scope) -> Any:
    """A dependency: the calling key, if its scope reaches ``needed``; 403 otherwise."""

    async def check(caller: ApiKeyDep) -> CallerKey:
        if not caller.scope.allows(needed):
            raise Forbidden(
                f"the key {caller.name!r} has scope {caller.scope.value}; this needs {needed.value}"
            )
        return caller

    return Depends(check)


OperateDep = Annotated[CallerKey, require_scope(Scope.OPERATE)]
AdminDep = Annotated[CallerKey, require_scope(Scope.ADMIN)]
