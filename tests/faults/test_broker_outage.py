"""Redis dies with a thousand jobs queued and comes back empty: refusals while down, recovery, nothing lost."""
import time

import pytest
from django.db import transaction

from jobs import services
from jobs.backpressure import broker_list_names, gauge
from jobs.models import Job
from jobs.periodic import recover_jobs
from tests.faults.conftest import S, job_in, report, results_per_job, starts, status_counts, submit_marked
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

N = 1000


def queued_in_redis(redis_server) -> int:
    client = redis_server.client()
    return sum(client.llen(name) for name in broker_list_names("default"))


def test_redis_restarted_empty_loses_no_job(worker_factory, user, api, client, tmp_path, redis_server,
                                            record_property):
    # One pool process busy with a long job: the worker holds that one message and no other,
    # so the thousand jobs wait in Redis.
    worker = worker_factory(concurrency=1)
    [(busy, busy_marker)] = submit_marked(user, "test_busy", tmp_path, seconds=12)
    job_in(busy.pk, S.RUNNING)
    with transaction.atomic():
        ids = [services.job_submit(user=user, kind="noop").job.pk for _ in range(N)]
    assert queued_in_redis(redis_server) == N

    redis_server.stop()
    gauge.reset()
    refused = api.post("/api/jobs", {"kind": "noop"})
    assert refused.status_code == 503, refused.content
    assert refused.json()["error"] == "broker_unavailable" and refused["Retry-After"]
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["database"] == "ok" and health.json()["broker"].startswith("down")
    assert Job.objects.count() == N + 1, "a refused submission writes nothing"
    # The worker notices the broker is gone and keeps trying, without exiting.
    wait_for(lambda: "Connection to broker lost" in worker.log() or "Cannot connect to redis" in worker.log(),
             timeout=15, message="the worker to notice the broker is gone")
    assert worker.process.poll() is None

    redis_server.start()
    gauge.reset()
    assert queued_in_redis(redis_server) == 0, "Redis came back empty: the messages are gone"
    wait_for(lambda: worker.log().count("Connected to redis") >= 2, timeout=30,
             message="the worker to reconnect by itself")
    assert client.get("/healthz").status_code == 200

    started = time.monotonic()
    first_pass = recover_jobs(stale_after=0)
    assert first_pass["republished"] == N, first_pass

    def all_finished():
        # What beat does every 30 s, done here each second: the busy job, whose run was stopped
        # when the connection dropped, is taken back once its lease is over.
        if Job.objects.filter(pk=busy.pk, status=S.RUNNING).exists():
            recover_jobs(stale_after=5)
        return Job.objects.filter(pk__in=[*ids, busy.pk], status=S.SUCCEEDED).count() == N + 1

    try:
        wait_for(all_finished, timeout=150, interval=1, message="every job to finish")
    except pytest.fail.Exception:
        pytest.fail(f"jobs after recovery: {status_counts([*ids, busy.pk])}")
    took = time.monotonic() - started

    assert results_per_job([*ids, busy.pk]) == {str(i): 1 for i in [*ids, busy.pk]}
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert len(starts(busy_marker)) == Job.objects.get(pk=busy.pk).attempts == 2
    assert worker.process.poll() is None
    report(record_property, queued_when_redis_stopped=N, republished=first_pass["republished"],
           succeeded=N + 1, results=N + 1, busy_job_runs=len(starts(busy_marker)),
           seconds_to_finish_after_restart=round(took, 1))
