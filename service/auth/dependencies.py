"""Request dependencies: ``ReadAccess`` (any valid key) and ``AdminAccess`` (an admin key), from ``X-API-Key``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.auth.service import Principal, unauthorized
from service.errors import ApiError

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (role read or admin)")


def current_principal(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> Principal:
    if not key:
        raise unauthorized("missing X-API-Key header")
    principal = request.app.state.key_cache.lookup(request.app.state.db.session_factory, key)
    if principal is None:
        raise unauthorized("invalid or revoked API key")
    return principal


def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, f"this operation needs an admin key; key {principal.name!r} has role {principal.role!r}")
    return principal


ReadAccess = Annotated[Principal, Depends(current_principal)]
AdminAccess = Annotated[Principal, Depends(require_admin)]
