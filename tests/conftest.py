"""Fixtures: a private Redis on a free loopback port, real Celery workers, users and API clients."""
from __future__ import annotations

import os

import pytest
from django.conf import settings

from tests.support import LOG_DIR, Beat, RedisServer, Worker

# This run's metrics files (its own and those of the workers it starts) go to a directory of its
# own, not to var/prometheus of a platform running from the same checkout. No metric value exists
# yet: prometheus-client opens a process's files when a value is first used.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(LOG_DIR / f"metrics-{os.getpid()}")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _platform_uses_test_redis(redis_server):
    """Point settings, the Celery app and the Redis clients at the private Redis."""
    from celery import current_app

    from jobs.infra import redis as redis_clients
    from jobs.services import admission

    import tests.kinds_for_tests  # noqa: F401 - the misbehaving kinds; workers load them via JOBS_KIND_MODULES

    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request otherwise
    settings.REDIS_URL = redis_server.url
    settings.CELERY_BROKER_URL = redis_server.url
    current_app.conf.broker_url = redis_server.url
    redis_clients.reset()
    admission.reset()
    yield


@pytest.fixture(autouse=True)
def _fresh_redis(redis_server):
    """Each test starts with empty queues, counters and gates, and no token kept."""
    from jobs.services import admission, tokens

    admission.reset()  # first: a background reading of the last test must not write after the flush
    tokens.clear_cache()
    if redis_server.process is None:
        redis_server.start()
    redis_server.client().flushall()
    yield


@pytest.fixture
def worker_factory(redis_server, transactional_db):
    """Start real workers with custom options; every one is stopped at the end of the test."""
    started: list[Worker] = []

    def start(*, wait: bool = True, **kwargs) -> Worker:
        worker = Worker(redis_server.url, **kwargs)
        started.append(worker)
        return worker.start(wait=wait)

    yield start
    for worker in started:
        worker.stop(timeout=5)


@pytest.fixture
def beat_factory(redis_server):
    started = []

    def start() -> Beat:
        beat = Beat(redis_server.url)
        started.append(beat)
        return beat.start()

    yield start
    for beat in started:
        beat.stop()


@pytest.fixture
def live_worker(worker_factory):
    """One real worker consuming every queue (housekeeping too), with two prefork processes."""
    return worker_factory()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="alice-password-1")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="bob-password-1")


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="staff", password="staff-password-1", is_staff=True)


class ApiClient:
    """Django's test client speaking JSON with a bearer token."""

    def __init__(self, client, token: str | None):
        self.client = client
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, path, **params):
        return self.client.get(path, params, **self.headers)

    def post(self, path, data=None, *, raw: bytes | str | None = None, content_type="application/json"):
        import json

        body = raw if raw is not None else json.dumps(data if data is not None else {})
        return self.client.post(path, body, content_type=content_type, **self.headers)


@pytest.fixture
def api_for(client):
    from jobs.services import api_token_create

    def make(user) -> ApiClient:
        return ApiClient(client, api_token_create(user=user)[1] if user else None)

    return make


@pytest.fixture
def api(api_for, user):
    return api_for(user)


def pytest_collection_modifyitems(config, items):
    """Tests that use a real worker or server run after the quick ones, so that failures show early."""
    slow = ("integration", "browser", "faults")
    items.sort(key=lambda item: any(f"/{name}/" in str(item.fspath) for name in slow))
