"""The beat scheduler: django-celery-beat's DatabaseScheduler, dispatching only while it holds a lock in Redis."""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import redis
from django_celery_beat.schedulers import DatabaseScheduler

from . import services
from .infra.redis import client

logger = logging.getLogger(__name__)

LOCK_KEY = "jobs:beat:leader"

# Extend or delete the lock only while it is still ours: a lock that expired and was taken by
# another beat must not be renewed or released by the one that lost it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class SingleBeatScheduler(DatabaseScheduler):
    """One beat dispatches; any other started by mistake waits as a standby and sends nothing.

    The leader renews its lock at every tick and sleeps at most a third of the lock's life
    between ticks, so it keeps the lock while alive. A leader that stops cleanly releases it
    and a standby takes over within STANDBY_POLL seconds; one that dies leaves it to expire.

    Taking the lock, it first applies the user schedules' catch-up policies to the runs missed while no beat
    dispatched; each send is recorded in Redis, which is where the next leader starts from.
    """

    # Long enough that a leader slowed by a busy database keeps its lock, short enough that a
    # standby takes over from a dead leader within a few schedule periods.
    lock_ttl = 15.0
    # How often a standby tries the lock.
    standby_poll = 1.0
    # Write last_run_at back to the database every 30 s rather than Celery's 3 minutes, so that
    # a standby taking over from a dead leader does not run much again.
    sync_every = 30

    def __init__(self, *args, **kwargs):
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._leader = False
        super().__init__(*args, **kwargs)

    @property
    def lock_redis(self) -> redis.Redis:
        return client(timeout=2)

    def _hold_lock(self) -> bool:
        """Renew the lock if it is ours, take it if it is free; False if another beat has it."""
        ttl_ms = int(self.lock_ttl * 1000)
        try:
            held = bool(self.lock_redis.eval(_RENEW, 1, LOCK_KEY, self._token, ttl_ms)) or bool(
                self.lock_redis.set(LOCK_KEY, self._token, nx=True, px=ttl_ms)
            )
        except redis.RedisError as exc:
            # Without Redis nobody can prove to be the only beat: stand by (there is no broker to send to either).
            logger.warning("beat lock unavailable, not dispatching: %s", exc)
            held = False
        if held and not self._leader:
            logger.info("beat lock taken: this beat dispatches (%s)", self._token)
            self._catch_up()
            # Start from the database's schedule, where the previous leader recorded its last runs.
            self._initial_read = True
            self._heap = None
            # The heap is built afresh from that read. A rebuild still pending from a change seen while standing by
            # would rebuild it once more after the first sends, from entries older than those sends: an entry due
            # at the takeover would be sent twice.
            self._heap_invalidated = False
        elif not held and self._leader:
            logger.warning("beat lock lost: this beat stops dispatching (%s)", self._token)
        self._leader = held
        return held

    def _catch_up(self) -> None:
        """Runs missed while no beat dispatched: counted, and each user schedule's catch-up policy applied."""
        try:
            services.schedules_catch_up()
        except Exception:  # noqa: BLE001 - the database may be down: beat then runs what is due, once each
            logger.exception("could not check the schedules for missed runs")

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        # Kept in Redis at each send: the database's last_run_at is written only every sync_every seconds, and the
        # next beat to lead starts from the later of the two (neither repeating nor miscounting runs).
        services.schedule_dispatched(name=entry.name, at=time.time())
        return result

    def schedule_changed(self):
        # django-celery-beat compares the change stamp with the one it saw last, and so misses the
        # first change made while it had seen none (no schedule had ever been saved).
        before = self._last_timestamp
        return super().schedule_changed() or (before is None and self._last_timestamp is not None)

    def tick(self, *args, **kwargs):
        if not self._hold_lock():
            return self.standby_poll
        return min(super().tick(*args, **kwargs), self.lock_ttl / 3)

    def close(self):
        try:
            super().close()
        finally:
            if self._leader:
                try:
                    self.lock_redis.eval(_RELEASE, 1, LOCK_KEY, self._token)
                    logger.info("beat lock released (%s)", self._token)
                except redis.RedisError:
                    pass  # it expires by itself
                self._leader = False
