"""The dashboard's database session is the service's own request-scoped session (one commit point):
the admin sub-app shares the parent app's ``state``, so ``service.db.get_session`` finds ``state.db``."""

from __future__ import annotations

from service.db import get_session as get_db

__all__ = ["get_db"]
