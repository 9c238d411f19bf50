"""Who may see the dashboard: an admin API key, exchanged once at the login form for a signed session
cookie (Starlette's SessionMiddleware, itsdangerous). Every request re-reads the key's row, so a revoked
key or one demoted to ``read`` loses the dashboard at once."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.admin.deps import get_db
from service.auth.models import ApiKey

SESSION_KEY_ID = "key_id"
SESSION_CSRF = "csrf"


class LoginRequired(Exception):
    """No session, or the session's key is no longer an active admin key."""


class CsrfFailed(Exception):
    """A form came back without this session's token."""


def log_in(request: Request, key_id: int) -> None:
    request.session.clear()
    request.session[SESSION_KEY_ID] = key_id
    request.session[SESSION_CSRF] = secrets.token_urlsafe(24)


def log_out(request: Request) -> None:
    request.session.clear()


def current_admin(request: Request, db: Session = Depends(get_db)) -> ApiKey:
    key_id = request.session.get(SESSION_KEY_ID)
    if not isinstance(key_id, int):
        raise LoginRequired()
    key = db.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None or key.role != "admin":
        request.session.clear()
        raise LoginRequired()
    return key


def csrf_token(request: Request) -> str:
    return str(request.session.get(SESSION_CSRF, ""))


def check_csrf(request: Request, form: Any) -> None:
    expected = request.session.get(SESSION_CSRF)
    if not expected or not secrets.compare_digest(str(form.get("csrf", "")), str(expected)):
        raise CsrfFailed()
