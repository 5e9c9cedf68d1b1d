"""The one factory of Redis clients: the platform's Redis (REDIS_URL) and the broker's, when it is Redis."""
from __future__ import annotations

import threading

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

_clients: dict[tuple, redis.Redis] = {}
_lock = threading.Lock()


def redis_py_url(url: str) -> str:
    """Kombu spells a unix-socket Redis URL `redis+socket://`; redis-py spells it `unix://`."""
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+socket://") else url


def client(*, url: str | None = None, retries: bool = True, timeout: float = 0.5) -> redis.Redis:
    """A client of `url` (REDIS_URL by default), one per process and options.

    `retries=False` where sending twice would count twice (counters) or where a request must
    not wait on a Redis that does not answer.
    """
    key = (redis_py_url(url or settings.REDIS_URL), retries, timeout)
    found = _clients.get(key)
    if found is None:
        with _lock:
            found = _clients.get(key)
            if found is None:
                options = {} if retries else {"retry": Retry(NoBackoff(), 0)}
                found = _clients[key] = redis.Redis.from_url(
                    key[0], socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30,
                    **options)
    return found


def broker_is_redis() -> bool:
    return settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://"))


def broker_client() -> redis.Redis:
    """The broker's Redis (the platform's own unless CELERY_BROKER_URL names another)."""
    return client(url=settings.CELERY_BROKER_URL)


def broker_is_platform_redis() -> bool:
    return redis_py_url(settings.CELERY_BROKER_URL) == redis_py_url(settings.REDIS_URL)


def reset() -> None:
    """Forget every client (tests point REDIS_URL at another server)."""
    with _lock:
        _clients.clear()


# What a client raises when Redis does not answer.
REDIS_DOWN = (redis.RedisError, OSError)
