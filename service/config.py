"""Service settings, read from the environment (pydantic-settings); every field can be set as an
upper-case environment variable, e.g. ``DATABASE_URL`` or ``MODEL_REFRESH_SECONDS``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_PATH = Path("var") / "rbmrec.sqlite3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # The embedded SQLite file lets the demo run with nothing else installed; production uses PostgreSQL.
    database_url: str = Field(default=f"sqlite:///{DEFAULT_SQLITE_PATH}")
    database_pool_size: int = 10
    database_echo: bool = False

    # Ratings are integers 1..rating_scale (MovieLens: 5 stars).
    rating_scale: int = Field(default=5, ge=2, le=100)

    # Request limits: JSON batches above max_batch_rows and uploads above max_upload_bytes get 413.
    max_batch_rows: int = Field(default=10_000, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    max_recommendations: int = Field(default=1000, ge=1)
    max_reconstruction_samples: int = Field(default=100, ge=1)
    max_reconstruction_steps: int = Field(default=1000, ge=1)

    # Serving: how often a process checks which model versions are active (seconds; 0 = on every request).
    model_refresh_seconds: float = Field(default=2.0, ge=0)
    # API keys are looked up once and cached this long (seconds) per process.
    api_key_cache_seconds: float = Field(default=5.0, ge=0)
    # Device for scoring ("cpu", "cuda", ...); empty = cuda when available, else cpu.
    device: str = ""
    # Threads torch may use per API process (several processes share the cores).
    torch_threads: int = Field(default=1, ge=1)
    # Scoring passes one API process runs at once (requests wait for a slot; their database work still overlaps).
    scoring_concurrency: int = Field(default=1, ge=1)

    # Checked at start-up: the schema must be at the Alembic head.
    check_migrations: bool = True

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        # Accept the libpq-style URL and pick psycopg 3, the driver this project ships.
        if value.startswith("postgres://"):
            value = "postgresql://" + value[len("postgres://"):]
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://"):]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
