"""Fixtures of the admin dashboard's browser tests (defined in admin_harness.py)."""

from admin_harness import browser, database_url, live_server, worker  # noqa: F401
