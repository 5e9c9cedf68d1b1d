"""Recovery with real Redis and workers: a job whose message was lost is republished and completes; a dead worker's job runs again."""
import json
import pytest

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.models import Job
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def message_ids(redis_server, queue):
    client = redis_server.client()
    return [json.loads(raw)["headers"]["id"] for name in broker_list_names(queue) for raw in client.lrange(name, 0, -1)]


def test_a_job_whose_message_was_lost_is_republished_and_completes(redis_server, user, worker_factory):
    job = services.job_submit(user=user, kind="count_primes", params={"limit": 10_000}).job
    assert message_ids(redis_server, "cpu") == [str(job.id)]
    # While its message is there, recovery leaves the job alone.
    assert services.recover_jobs(stale_after=0)["republished"] == 0

    deleted = redis_server.client().delete(*broker_list_names("cpu"))
    assert deleted == 1 and message_ids(redis_server, "cpu") == []
    # Not stale yet: it was published just now, and the threshold is a minute.
    assert services.recover_jobs(stale_after=60)["republished"] == 0
    assert services.recover_jobs(stale_after=0)["republished"] == 1
    assert message_ids(redis_server, "cpu") == [str(job.id)]

    worker_factory(queues="cpu")
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).first(), timeout=60,
                    message="the republished job to succeed")
    assert done.attempts == 1


def test_a_job_whose_worker_died_is_taken_back_by_another_workers_heartbeat(redis_server, user, worker_factory):
    quick = {"JOBS_LEASE_SECONDS": "4", "JOBS_HEARTBEAT_SECONDS": "1"}
    first = worker_factory(queues="default", env=quick)
    job = services.job_submit(user=user, kind="test_sleep", params={"seconds": 2}).job
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).exists(), timeout=60,
             message="the job to start")
    first.kill_all()  # the whole worker, pool and all, with no chance to report
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING
    counts = services.jobs_reclaim_lapsed()
    assert counts["stuck_retried"] == counts["stuck_failed"] == 0  # its lease has not lapsed yet

    # No beat here: the second worker's heartbeat takes the job back once the lease lapses, and publishes it.
    second = worker_factory(queues="default", env=quick)
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).first(), timeout=60,
                    message="the job to succeed on the second worker")
    assert done.attempts == 2 and done.worker == second.hostname
    [lost] = done.errors.values_list("error", flat=True)
    assert lost == f"worker lost: {first.hostname} stopped renewing the lease"
