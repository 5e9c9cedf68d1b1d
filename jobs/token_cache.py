"""API token lookups kept per process, and forgotten everywhere as soon as any token or user changes.

Finding the user of a bearer token is an ORM query on every API request: on a small machine as
much CPU as the rest of a submission. Kept in the process, it is a dictionary lookup. A
generation number in Redis says when what is kept may be stale: any save or delete of a token
or a user bumps it, and each process compares it with the one its entries were read under at
most every JOBS_TOKEN_CACHE_SECONDS. So a revoked token, a deleted token or a deactivated user
stops working in every process within that time, and at once in the process that made the
change. While Redis does not answer, nothing is kept and every request asks the database (Redis
is tried again once per interval, without retries, so that an outage does not slow reads down); a
change that could not be announced is announced at that process's next check, and no entry is
kept longer than MAX_ENTRY_AGE seconds whatever happens: that is the bound if an announcement is lost.
"""
from __future__ import annotations

import copy
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
from django.conf import settings
from django.db import transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

GENERATION_KEY = "jobs:auth:generation"
MAX_ENTRIES = 10_000  # a bound on memory: past it the cache starts over
MAX_ENTRY_AGE = 60.0  # seconds: the bound on a stale entry should an announcement be lost


@dataclass
class CachedToken:
    user: object
    token_id: int
    last_used_at: datetime | None
    kept_at: float = 0.0  # time.monotonic() when read from the database


class TokenCache:
    def __init__(self):
        self._entries: dict[str, CachedToken] = {}
        self._generation: bytes | None = None  # None: not known, nothing may be kept
        self._checked_at = float("-inf")
        self._announcement_pending = False
        self._client: redis.Redis | None = None

    def get(self, digest: str) -> CachedToken | None:
        """The entry for a token's digest, if one is kept and still current."""
        if not self._current():
            return None
        entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry.kept_at > MAX_ENTRY_AGE:
            return None
        # A copy, so that what one request does to its user never reaches the next one.
        return CachedToken(copy.copy(entry.user), entry.token_id, entry.last_used_at, entry.kept_at)

    @property
    def generation(self) -> bytes | None:
        """The generation entries are kept under now: read it before reading the database, give it to put."""
        return self._generation

    def put(self, digest: str, entry: CachedToken, *, generation: bytes | None) -> None:
        """Keep an entry read from the database while `generation` was current.

        Nothing is kept if the generation changed meanwhile (another thread saw a change), so that
        a row read before a change is never kept after it.
        """
        if generation is None or generation != self._generation or settings.JOBS_TOKEN_CACHE_SECONDS <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = CachedToken(copy.copy(entry.user), entry.token_id, entry.last_used_at,
                                            time.monotonic())

    def touch(self, digest: str, when: datetime) -> None:
        entry = self._entries.get(digest)
        if entry is not None:
            entry.last_used_at = when

    def invalidate(self) -> None:
        """A token or a user changed: forget everything here, and tell every other process."""
        self._entries.clear()
        self._generation = None
        self._checked_at = float("-inf")  # the next request reads the new generation
        self._announce()

    def _announce(self) -> None:
        try:
            # A new random value, not a counter: a Redis restarted empty cannot come back to a value seen before.
            self._redis().set(GENERATION_KEY, uuid.uuid4().hex)
            self._announcement_pending = False
        except (redis.RedisError, OSError) as exc:
            # Processes that cannot reach Redis keep nothing; this one tells the others once it can.
            if not self._announcement_pending:
                logger.info("token change to be announced when Redis answers (%s)", exc)
            self._announcement_pending = True

    def clear(self) -> None:
        """Forget everything, the connection too (tests point REDIS_URL elsewhere)."""
        self._entries.clear()
        self._generation = None
        self._checked_at = float("-inf")
        self._client = None

    def _current(self) -> bool:
        """Whether kept entries may be used: the generation was read, and is rechecked when due."""
        interval = settings.JOBS_TOKEN_CACHE_SECONDS
        if interval <= 0:
            return False
        now = time.monotonic()
        if self._generation is not None and now - self._checked_at < interval:
            return True
        if self._generation is None and now - self._checked_at < interval:
            return False  # Redis failed at the last check: try it again next interval, not on every request
        if self._announcement_pending:
            self._announce()
        try:
            generation = self._redis().get(GENERATION_KEY) or b"0"
        except (redis.RedisError, OSError):
            self._entries.clear()
            self._generation = None
            self._checked_at = now
            return False
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation
        self._checked_at = now
        return True

    def _redis(self) -> redis.Redis:
        if self._client is None:
            # No retries: a request must not wait on a Redis that does not answer; the next check tries again.
            self._client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5,
                                                retry=Retry(NoBackoff(), 0))
        return self._client


token_cache = TokenCache()


def on_token_or_user_change(sender=None, **kwargs) -> None:
    """Signal receiver: forget now (a test's transaction may never commit) and again after commit.

    The second time closes a race: another process may read the old row and keep it between the
    first announcement and the commit; the announcement after commit makes it drop that entry.
    """
    token_cache.invalidate()
    transaction.on_commit(token_cache.invalidate)
