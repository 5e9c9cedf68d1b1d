"""API token lookups are kept a moment per process, and forgotten at once when a token or a user changes."""
import threading

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import ApiToken
from tests.support import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(user):
    return services.api_token_create(user=user)


def test_a_known_token_is_found_without_a_query(token, user, django_assert_num_queries):
    _, plain = token
    assert services.api_token_user(plain=plain) == user  # reads the row, stamps last_used_at
    with django_assert_num_queries(0):
        assert services.api_token_user(plain=plain) == user


def test_unknown_tokens_are_refused(token):
    assert services.api_token_user(plain="jpt_not-a-token") is None


def test_each_request_gets_its_own_copy_of_the_user(token, user):
    _, plain = token
    first = services.api_token_user(plain=plain)
    first.first_name = "changed by one request"
    assert services.api_token_user(plain=plain).first_name == ""


def test_revoking_a_token_refuses_it_at_once(token):
    stored, plain = token
    assert services.api_token_user(plain=plain) is not None
    services.api_token_revoke(token=stored)
    assert services.api_token_user(plain=plain) is None


def test_deactivating_the_user_refuses_the_token_at_once(token, user):
    _, plain = token
    assert services.api_token_user(plain=plain) is not None
    user.is_active = False
    user.save()
    assert services.api_token_user(plain=plain) is None


def test_a_change_made_by_another_process_is_seen_within_the_interval(token, settings):
    settings.JOBS_TOKEN_CACHE_SECONDS = 0.2
    stored, plain = token
    assert services.api_token_user(plain=plain) is not None
    # Another process revokes it: its row changes, and no signal reaches this one.
    ApiToken.objects.filter(pk=stored.pk).update(revoked_at=timezone.now())
    assert services.api_token_user(plain=plain) is not None, "kept for the interval"
    wait_for(lambda: services.api_token_user(plain=plain) is None, timeout=5,
             message="the revoked token to be refused")


def test_no_cache_when_switched_off(token, settings, django_assert_num_queries):
    settings.JOBS_TOKEN_CACHE_SECONDS = 0
    _, plain = token
    services.api_token_user(plain=plain)
    with django_assert_num_queries(1):
        assert services.api_token_user(plain=plain) is not None


def test_a_row_read_before_a_revocation_is_not_kept_after_it(token, monkeypatch):
    """Two threads of one process: A reads the token's row, B revokes it meanwhile; A must not keep the row."""
    stored, plain = token
    revoked = threading.Event()
    real_filter = ApiToken.objects.select_related

    def read_then_revoke(*args, **kwargs):
        rows = list(real_filter(*args, **kwargs).filter(key_hash=stored.key_hash))  # A reads the row
        services.api_token_revoke(token=stored)  # B, while A holds it
        revoked.set()

        class Rows:
            def filter(self, **kwargs):
                return self

            def first(self):
                return rows[0]

        return Rows()

    monkeypatch.setattr(ApiToken.objects, "select_related", read_then_revoke)
    assert services.api_token_user(plain=plain) is not None  # A answers from the row it read
    monkeypatch.undo()
    assert revoked.is_set()
    assert services.api_token_user(plain=plain) is None  # but did not keep it past the revocation
