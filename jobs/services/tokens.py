"""API tokens: create, revoke, and find the user behind a bearer token (kept a moment per process).

Finding the user of a token is a query on every API request, as much CPU as the rest of a
submission on a small machine; kept in the process for JOBS_TOKEN_CACHE_SECONDS it is a
dictionary lookup (bench/README.md, "Complexity that pays", has the figure). Any save or delete of
a token or a user empties this process's cache at once, and every other process's entries expire
within JOBS_TOKEN_CACHE_SECONDS: that is the bound on a revoked token or a deactivated user.
"""
from __future__ import annotations

import copy
import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from cachetools import TTLCache
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..models import ApiToken
from .audit import Action, audit_record

_lock = threading.Lock()
_cache: TTLCache | None = None  # digest -> _Entry, made on first use from the setting
_cleared = 0  # how many times this process forgot everything: a row read before a change is not kept after it


@dataclass
class _Entry:
    user: object
    token_id: int
    last_used_at: datetime | None


def api_token_create(*, user, name: str = "") -> tuple[ApiToken, str]:
    """Make a token for `user`; the plain token is returned once and never stored."""
    plain = "jpt_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100], key_hash=_digest(plain), prefix=plain[:12])
    return token, plain


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor=None) -> ApiToken:
    """Revoke a token (once: revoking it again changes nothing). `actor`: the user who asked, recorded in the audit
    log (None: the platform itself, not recorded)."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        if actor is not None:
            audit_record(actor=actor, action=Action.TOKEN_REVOKE, target=f"token:{token.prefix}",
                         detail={"owner": token.user.get_username(), "name": token.name})
    return token


def api_token_user(*, plain: str):
    """The active user a bearer token belongs to, or None for an unknown or revoked token."""
    digest = _digest(plain)
    entry, cleared = _get(digest)
    if entry is None:
        token = ApiToken.objects.select_related("user").filter(key_hash=digest, revoked_at__isnull=True).first()
        if token is None or not token.user.is_active:
            return None
        entry = _Entry(token.user, token.pk, token.last_used_at)
        _put(digest, entry, cleared)
    # Kept up to date once a minute: it tells the user which tokens are still in use. Stamped on
    # the entry in place, so that the entry's time to live does not start again.
    now = timezone.now()
    if entry.last_used_at is None or (now - entry.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=entry.token_id).update(last_used_at=now)
        entry.last_used_at = now
    # A copy, so that what one request does to its user never reaches the next one.
    return copy.copy(entry.user)


def forget_tokens(**signal_kwargs) -> None:
    """A token or a user changed: forget now, and again after commit (a read in between may keep the old row)."""
    clear_cache()
    transaction.on_commit(clear_cache)


def _digest(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def _get(digest: str):
    """The entry kept for `digest` (or None), and the clear count to give _put with what is read instead."""
    with _lock:
        found = _cache.get(digest) if _cache is not None and settings.JOBS_TOKEN_CACHE_SECONDS > 0 else None
        return found, _cleared


def _put(digest: str, entry, cleared: int) -> None:
    global _cache
    with _lock:
        if settings.JOBS_TOKEN_CACHE_SECONDS <= 0 or cleared != _cleared:
            return
        if _cache is None or _cache.ttl != settings.JOBS_TOKEN_CACHE_SECONDS:
            _cache = TTLCache(maxsize=10_000, ttl=settings.JOBS_TOKEN_CACHE_SECONDS)
        _cache[digest] = entry


def clear_cache() -> None:
    """Forget every token this process keeps."""
    global _cleared
    with _lock:
        _cleared += 1
        if _cache is not None:
            _cache.clear()
