"""Flower as the Procfile starts it, before any worker (the order `make run` starts them in): it lists the
worker that comes up after it without `?refresh=1`, and every declared queue, consumed or not; and the declared
queues are the ones Celery would create on first use (same Redis lists, bindings and priorities)."""
import json
import os
import secrets
import subprocess
import sys

import httpx
import pytest
from django.conf import settings

from tests.support import BASE_DIR, LOG_DIR, free_port, procfile, stop_group, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DECLARED = [*settings.JOBS_QUEUES, settings.JOBS_PLATFORM_QUEUE]


@pytest.fixture
def flower(redis_server):
    port = free_port()
    auth = ("ops", secrets.token_urlsafe(16))
    env = {**os.environ, "REDIS_URL": redis_server.url, "CELERY_BROKER_URL": redis_server.url,
           "FLOWER_BASIC_AUTH": ":".join(auth), "FLOWER_HOST": "127.0.0.1", "FLOWER_PORT": str(port),
           "PYTHONUNBUFFERED": "1",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}  # `python` is ours
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"flower-{port}.log"
    process = subprocess.Popen(["sh", "-c", procfile()["flower"]], cwd=BASE_DIR, env=env,
                               stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=auth, timeout=10)

    def answering() -> bool:
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            return http.get("/healthcheck").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answering, timeout=60, interval=0.2, message="Flower to answer")
        yield http
    finally:
        http.close()
        stop_group(process, 10)


def queue_names(http) -> list[str]:
    response = http.get("/api/queues/length")
    assert response.status_code == 200, response.text
    return [q["name"] for q in response.json()["active_queues"]]


def test_flower_started_first_lists_the_worker_without_refresh_and_every_declared_queue(flower, worker_factory):
    assert flower.get("/api/workers").json() == {}
    assert set(DECLARED) <= set(queue_names(flower))

    # Nobody consumes `cpu` or `platform`.
    worker = worker_factory(queues="default,io", concurrency=1)

    listed = wait_for(lambda: flower.get("/api/workers").json().get(worker.hostname), timeout=20, interval=0.2,
                      message=f"Flower's /api/workers to list {worker.hostname} (no refresh)")
    assert {q["name"] for q in listed["active_queues"]} == {"default", "io"}
    assert listed["stats"]["pid"] == worker.process.pid
    assert worker.hostname in [w["hostname"] for w in flower.get("/workers", params={"json": 1}).json()["data"]]

    # Now that a worker's queues are known, the declared ones nobody consumes are still listed.
    assert set(DECLARED) <= set(queue_names(flower))
    broker_page = flower.get("/broker")
    assert broker_page.status_code == 200
    for name in DECLARED:
        assert f">{name}<" in broker_page.text.replace(" ", "").replace("\n", ""), name


def test_declared_queues_keep_the_redis_lists_and_priorities_of_queues_celery_creates(redis_server):
    from celery import current_app

    from jobs.infra.broker import broker_list_names, read_depths

    queues = current_app.amqp.queues
    assert [q.name for q in current_app.conf.task_queues] == DECLARED
    for name in DECLARED:
        declared, created = queues[name], queues.new_missing(name)
        assert (declared.exchange.name, declared.exchange.type, declared.routing_key, declared.durable) == \
            (created.exchange.name, created.exchange.type, created.routing_key, created.durable), name
        # No x-max-priority (nor any other argument): a RabbitMQ queue declared before keeps its arguments.
        assert not declared.queue_arguments and declared.max_priority is None, name

    # A connection of its own: the producer pool's remembers declaring queues in Redis that a test has flushed.
    with current_app.connection_for_write() as connection:
        for name in DECLARED:
            for priority in range(10):
                current_app.send_task("jobs.noop", args=("0", {}), queue=name, priority=priority, connection=connection)
    r = redis_server.client()
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS["sep"]
    for name in DECLARED:
        # One list per priority step, each holding the message of its priority.
        assert [r.llen(key) for key in broker_list_names(name)] == [1] * 10, name
        assert [json.loads(r.lindex(key, 0))["properties"]["priority"] for key in broker_list_names(name)] == \
            list(range(10)), name
        # Bound as before: routing key, no pattern, queue.
        assert r.smembers(f"_kombu.binding.{name}") == {f"{name}{sep}{sep}{name}".encode()}, name
    assert read_depths(DECLARED, keys=[])[0] == dict.fromkeys(DECLARED, 10)
