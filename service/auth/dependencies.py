"""Request dependencies: ``ReadAccess`` (any valid key) and ``AdminAccess`` (an admin key), from ``X-API-Key``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from service.auth.service import Principal, unauthorized
from service.errors import ApiError

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (role read or admin)")


async def current_principal(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> Principal:
    """A key checked within the key cache's TTL is answered on the event loop; only a lookup query goes to the
    thread pool (a sync dependency would cost a thread hand-off on every request)."""
    if not key:
        raise unauthorized("missing X-API-Key header")
    cache = request.app.state.key_cache
    principal = cache.cached(key)
    if principal is None:
        principal = await run_in_threadpool(cache.lookup, request.app.state.db.session_factory, key)
    if principal is None:
        raise unauthorized("invalid or revoked API key")
    return principal


async def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, f"this operation needs an admin key; key {principal.name!r} has role {principal.role!r}")
    return principal


ReadAccess = Annotated[Principal, Depends(current_principal)]
AdminAccess = Annotated[Principal, Depends(require_admin)]
