"""Recovery with real Redis and workers: a job whose message was lost is republished and completes; a dead worker's job runs again."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

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


def test_a_job_whose_worker_died_is_retried_on_another_worker(redis_server, user, worker_factory):
    first = worker_factory(queues="default")
    job = services.job_submit(user=user, kind="test_sleep", params={"seconds": 2}).job
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).exists(), timeout=60,
             message="the job to start")
    first.kill_all()  # the whole worker, pool and all, with no chance to report
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING
    assert services.recover_jobs()["stuck_released"] == 0  # its lease has not run out

    # Its lease (time limit + 5 s) runs out: move it into the past rather than wait 45 s.
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    counts = services.recover_jobs()
    assert counts["stuck_retried"] == 1 and counts["stuck_failed"] == 0
    job.refresh_from_db()
    assert job.status == Job.Status.RETRYING and "worker lost" in job.error
    assert str(job.id) in message_ids(redis_server, "default")

    second = worker_factory(queues="default")
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).first(), timeout=60,
                    message="the job to succeed on the second worker")
    assert done.attempts == 2 and done.worker == second.hostname
    assert list(done.errors.values_list("error", flat=True)) == [
        "worker lost: the job ran past its time limit without finishing"]
