"""Stores: dedup state and the durable delivery queue."""

from __future__ import annotations

from relay.errors import ConfigError
from relay.store.base import Store


def open_store(url: str, prefix: str = "relay") -> Store:
    """Open the store named by ``url``: ``sqlite:///path`` or ``redis://…``."""
    if url.startswith("sqlite:///"):
        from relay.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        from relay.store.redis import RedisStore

        return RedisStore(url, prefix=prefix)
    raise ConfigError(
        f"store URL must start with sqlite:/// or redis:// or rediss://; got {url!r}"
    )
