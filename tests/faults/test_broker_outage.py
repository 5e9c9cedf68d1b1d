"""Redis dies and comes back empty: refusals while it is down, workers reconnecting, recovery, nothing lost."""
import time

import pytest
from celery import current_app
from django.db import transaction

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.services import admission
from jobs.models import Job
from jobs.services import recover_jobs
from tests.faults.conftest import S, job_in, report, results_per_job, starts, status_counts, submit_marked
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

N = 1000


def queued_in_redis(redis_server, queue="default") -> int:
    client = redis_server.client()
    return sum(client.llen(name) for name in broker_list_names(queue))


def broker_lost_and_retrying(worker) -> bool:
    log = worker.log()
    return "Connection to broker lost" in log and "Cannot connect to redis" in log


def test_redis_restarted_empty_under_a_thousand_queued_jobs_loses_none(worker_factory, user, api, client,
                                                                       redis_server, record_property):
    # Connected all along, but consuming another queue: the thousand jobs wait in Redis.
    worker = worker_factory(queues="cpu", concurrency=2)
    with transaction.atomic():
        ids = [services.job_submit(user=user, kind="noop").job.pk for _ in range(N)]
    assert queued_in_redis(redis_server) == N

    redis_server.stop()
    admission.reset()
    refused = api.post("/api/jobs", {"kind": "noop"})
    assert refused.status_code == 503, refused.content
    assert refused.json()["error"] == "broker_unavailable" and refused["Retry-After"]
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["database"] == "ok" and health.json()["broker"].startswith("down")
    assert Job.objects.count() == N, "a refused submission writes nothing"
    wait_for(lambda: broker_lost_and_retrying(worker), timeout=20, message="the worker to notice and keep trying")
    assert worker.process.poll() is None

    redis_server.start()
    admission.reset()
    assert queued_in_redis(redis_server) == 0, "Redis came back empty: the messages are gone"
    wait_for(lambda: worker.log().count("Connected to redis") >= 2, timeout=30,
             message="the worker to reconnect by itself")
    assert client.get("/healthz").status_code == 200

    started = time.monotonic()
    recovered = recover_jobs(stale_after=0)
    assert recovered["republished"] == N, recovered
    assert queued_in_redis(redis_server) == N
    # The same worker, reconnected, takes the queue on when told to over the broker's control channel.
    wait_for(lambda: current_app.control.add_consumer("default", destination=[worker.hostname], reply=True,
                                                      timeout=2),
             timeout=30, interval=1, message="the reconnected worker to answer a control command")
    try:
        wait_for(lambda: Job.objects.filter(pk__in=ids, status=S.SUCCEEDED).count() == N, timeout=150,
                 interval=0.5, message="every job to finish")
    except pytest.fail.Exception:
        pytest.fail(f"jobs after recovery: {status_counts(ids)}")
    took = time.monotonic() - started

    assert results_per_job(ids) == {str(i): 1 for i in ids}
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert set(Job.objects.filter(pk__in=ids).values_list("worker", flat=True)) == {worker.hostname}
    assert worker.process.poll() is None
    report(record_property, queued_when_redis_stopped=N, republished=recovered["republished"], succeeded=N,
           results=N, seconds_to_finish_after_restart=round(took, 1))


def test_a_job_running_when_redis_dies_is_run_again_to_one_result(worker_factory, user, tmp_path, redis_server,
                                                                  record_property):
    worker = worker_factory(concurrency=1)
    [(job, marker)] = submit_marked(user, "test_busy", tmp_path, seconds=8)
    job_in(job.pk, S.RUNNING)

    redis_server.stop()
    # Its message is gone with Redis; the worker stops the run rather than let a second copy
    # run beside it later (CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS), and the
    # ledger records it at once: handed back, its attempt given back, waiting for a new message.
    wait_for(lambda: broker_lost_and_retrying(worker), timeout=20, message="the worker to notice")
    handed_back = job_in(job.pk, S.RETRYING, timeout=10)
    assert handed_back.attempts == 0 and handed_back.published_at is None
    redis_server.start()
    admission.reset()
    wait_for(lambda: worker.log().count("Connected to redis") >= 2, timeout=30, message="the worker to reconnect")

    # No beat and no recovery here: the worker's heartbeat publishes the job again.
    done = job_in(job.pk, S.SUCCEEDED, timeout=60)
    assert done.attempts == 1 and len(starts(marker)) == 2
    assert results_per_job([job.pk]) == {str(job.pk): 1}
    report(record_property, runs=len(starts(marker)), results=1)
