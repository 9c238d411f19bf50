"""Creating API keys and checking them: a key is shown once at creation; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth.models import ROLES, ApiKey
from service.errors import ApiError, invalid

KEY_PREFIX = "rbm_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(session: Session, *, name: str, role: str) -> tuple[ApiKey, str]:
    """Insert a key; returns the row and the plaintext key (shown once, never stored)."""
    if role not in ROLES:
        raise invalid(f"role must be one of {', '.join(ROLES)}", ["role"])
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, role=role, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 6])
    session.add(row)
    session.flush()
    return row, key


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeyCache:
    """Per-process cache of key hash -> principal, so a request does not cost a key lookup query.
    A revoked key stops working within ``ttl`` seconds."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> Principal | None:
        """The principal of ``key`` if a lookup younger than ``ttl`` found it, else None (no query)."""
        hit = self._entries.get(hash_key(key))
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    def lookup(self, session_factory, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with session_factory() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
            principal = Principal(row.id, row.name, row.role) if row else None
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            # Unknown keys are remembered only briefly, so a key created a moment ago works at once.
            if principal is not None:
                self._entries[digest] = (now, principal)
        return principal


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "ApiKey"})
