"""API token lookups are kept per process, and dropped when any token or user changes anywhere."""
import hashlib

import pytest
from django.utils import timezone

from jobs import selectors, services
from jobs.models import ApiToken
from jobs import token_cache as token_cache_module
from jobs.token_cache import GENERATION_KEY, CachedToken, token_cache
from tests.support import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(user):
    return services.api_token_create(user=user)


def test_a_known_token_is_found_without_a_query(token, user, django_assert_num_queries):
    _, plain = token
    assert selectors.api_token_user(plain=plain) == user  # reads the row, stamps last_used_at
    with django_assert_num_queries(0):
        assert selectors.api_token_user(plain=plain) == user


def test_each_request_gets_its_own_copy_of_the_user(token, user):
    _, plain = token
    first = selectors.api_token_user(plain=plain)
    first.first_name = "changed by one request"
    assert selectors.api_token_user(plain=plain).first_name == ""


def test_revoking_a_token_refuses_it_at_once(token):
    stored, plain = token
    assert selectors.api_token_user(plain=plain) is not None
    services.api_token_revoke(token=stored)
    assert selectors.api_token_user(plain=plain) is None


def test_deactivating_the_user_refuses_the_token_at_once(token, user):
    _, plain = token
    assert selectors.api_token_user(plain=plain) is not None
    user.is_active = False
    user.save()
    assert selectors.api_token_user(plain=plain) is None


def test_a_change_announced_by_another_process_is_seen_within_the_interval(token, settings, redis_server):
    settings.JOBS_TOKEN_CACHE_SECONDS = 0.2
    stored, plain = token
    assert selectors.api_token_user(plain=plain) is not None
    # Another process revokes it: its row changes (no signal here) and it bumps the generation.
    ApiToken.objects.filter(pk=stored.pk).update(revoked_at=timezone.now())
    assert selectors.api_token_user(plain=plain) is not None, "kept until the generation changes"
    redis_server.client().set(GENERATION_KEY, "announced by another process")
    wait_for(lambda: selectors.api_token_user(plain=plain) is None, timeout=5,
             message="the revoked token to be refused")


def test_without_redis_every_lookup_asks_the_database(token, redis_server, settings, django_assert_num_queries):
    settings.JOBS_TOKEN_CACHE_SECONDS = 0.05
    _, plain = token
    selectors.api_token_user(plain=plain)
    redis_server.stop()
    wait_for(lambda: selectors.api_token_user(plain=plain) and token_cache.generation is None, timeout=5,
             message="a check to find Redis gone")
    with django_assert_num_queries(2):
        assert selectors.api_token_user(plain=plain) is not None
        assert selectors.api_token_user(plain=plain) is not None


def test_when_redis_goes_away_kept_entries_are_dropped(token, redis_server, settings):
    settings.JOBS_TOKEN_CACHE_SECONDS = 0.05
    stored, plain = token
    assert selectors.api_token_user(plain=plain) is not None
    redis_server.stop()
    # Revoked elsewhere while nobody can announce it: the next check fails, and a failed check forgets.
    ApiToken.objects.filter(pk=stored.pk).update(revoked_at=timezone.now())
    wait_for(lambda: selectors.api_token_user(plain=plain) is None, timeout=5,
             message="the revoked token to be refused")


def test_no_cache_when_switched_off(token, settings, django_assert_num_queries):
    settings.JOBS_TOKEN_CACHE_SECONDS = 0
    _, plain = token
    selectors.api_token_user(plain=plain)
    with django_assert_num_queries(1):
        assert selectors.api_token_user(plain=plain) is not None


def test_a_change_made_while_redis_was_away_is_announced_when_it_is_back(token, redis_server):
    stored, plain = token
    redis_server.stop()
    services.api_token_revoke(token=stored)  # cannot be announced now
    redis_server.start()
    token_cache.clear()  # the next check is due now, not after the interval
    assert redis_server.client().get(GENERATION_KEY) is None  # restarted empty
    selectors.api_token_user(plain=plain)  # the check announces the change it could not
    assert redis_server.client().get(GENERATION_KEY) is not None


def test_no_entry_outlives_its_maximum_age(token, monkeypatch, django_assert_num_queries):
    _, plain = token
    selectors.api_token_user(plain=plain)
    monkeypatch.setattr(token_cache_module, "MAX_ENTRY_AGE", 0.0)
    with django_assert_num_queries(1):
        assert selectors.api_token_user(plain=plain) is not None


def test_a_row_read_before_a_revocation_is_not_kept_after_it(token, user):
    """Two threads of one process: A reads the token's row, B revokes it meanwhile; A must not keep the row."""
    stored, plain = token
    assert selectors.api_token_user(plain=plain) is not None
    read_under = token_cache.generation  # A: the generation, then the row (still valid)
    row_read_by_a = CachedToken(user=user, token_id=stored.pk, last_used_at=timezone.now())
    services.api_token_revoke(token=stored)  # B
    assert selectors.api_token_user(plain=plain) is None  # a request after the change: a new generation
    token_cache.put(hashlib.sha256(plain.encode()).hexdigest(), row_read_by_a, generation=read_under)  # A, late
    assert selectors.api_token_user(plain=plain) is None
