"""Fixtures: a private Redis on a free loopback port, real Celery workers, SQS (an emulator) as the broker, users
and API clients."""
from __future__ import annotations

import os

import pytest
from django.conf import settings

from tests.support import (LOG_DIR, Beat, RedisServer, SqsServer, SqsServerUnavailable, Worker,
                           forget_broker_connections)

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
    import tests.tasks_for_tests  # noqa: F401 - plain Django tasks, likewise

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


@pytest.fixture(scope="session")
def sqs_server():
    """moto's SQS emulator on a free loopback port, started by the first test that needs it."""
    server = SqsServer()
    try:
        server.start()
    except SqsServerUnavailable as exc:
        pytest.skip(f"the SQS emulator cannot start here: {exc}")
    yield server
    server.stop()


class SqsBroker:
    """SQS (the emulator) as this process's broker, under queue names of one test's own (their prefix)."""

    def __init__(self, server: SqsServer, prefix: str, options: dict):
        self.server, self.prefix, self.options = server, prefix, options
        self.url = server.url

    def worker_env(self, **extra: str) -> dict:
        """What a worker needs to consume the same queues, the same way."""
        return {**SqsServer.ENV, "CELERY_BROKER_URL": self.url, "JOBS_SQS_QUEUE_PREFIX": self.prefix,
                "JOBS_VISIBILITY_TIMEOUT": str(self.options["visibility_timeout"]),
                "JOBS_SQS_WAIT_SECONDS": str(self.options["wait_time_seconds"]), **extra}

    def queue_url(self, queue: str) -> str:
        return self.server.client().get_queue_url(QueueName=f"{self.prefix}{queue}")["QueueUrl"]


@pytest.fixture
def use_sqs(sqs_server, settings, monkeypatch):
    """Make SQS (the emulator) the broker of this process for the test: publishing, depths, the gate.

    Call it with the options that differ (visibility_timeout=2); it returns an SqsBroker. Queue names are the
    test's own, so that each test starts with empty queues created with its options.
    """
    import uuid

    from celery import current_app

    from jobs.services import admission

    def use(*, visibility_timeout: int = 60) -> SqsBroker:
        for name, value in SqsServer.ENV.items():
            monkeypatch.setenv(name, value)
        prefix = f"t{uuid.uuid4().hex[:8]}-"
        options = {**settings.JOBS_SQS_TRANSPORT_OPTIONS, "queue_name_prefix": prefix,
                   "visibility_timeout": visibility_timeout, "region": SqsServer.ENV["AWS_DEFAULT_REGION"]}
        settings.CELERY_BROKER_URL = sqs_server.url
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
        current_app.conf.broker_url = sqs_server.url
        current_app.conf.broker_transport_options = options
        current_app.conf.broker_transport = settings.CELERY_BROKER_TRANSPORT = "jobs.infra.sqs:Transport"
        forget_broker_connections()
        admission.reset()
        return SqsBroker(sqs_server, prefix, options)

    redis_options = current_app.conf.broker_transport_options
    yield use
    current_app.conf.broker_url = settings.REDIS_URL
    current_app.conf.broker_transport_options = redis_options
    current_app.conf.broker_transport = None
    forget_broker_connections()
    admission.reset()


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
