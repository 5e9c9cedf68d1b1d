"""Routing: two workers with their own node names and queues; each kind runs where it is routed, and once."""
import re

import pytest
from django_celery_results.models import TaskResult

from jobs import services
from jobs.models import Job, JobError
from jobs.registry import get_kind
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_each_kind_runs_on_the_worker_of_its_queue_and_only_once(worker_factory, user):
    cpu_worker = worker_factory(queues="cpu", concurrency=1)
    other_worker = worker_factory(queues="default,io", concurrency=2)
    assert cpu_worker.hostname != other_worker.hostname
    submissions = {
        "count_primes": {"limit": 20_000},
        "noop": {},
        "steps": {"steps": 1, "step_seconds": 0},
        "fan_out": {"author_id": 7, "text": "routed", "ensure_followers": 3},
    }
    jobs = [services.job_submit(user=user, kind=kind, params=params).job
            for _ in range(3) for kind, params in submissions.items()]
    expected_worker = {"cpu": cpu_worker.hostname, "default": other_worker.hostname, "io": other_worker.hostname}
    assert {get_kind(kind).queue for kind in submissions} == set(expected_worker)

    ids = [job.pk for job in jobs]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Job.Status.SUCCEEDED).count() == len(ids), timeout=90,
             message="every job to succeed")

    for job in Job.objects.filter(pk__in=ids):
        assert job.worker == expected_worker[job.queue], f"{job.kind} ran on {job.worker}"
        assert job.attempts == 1
    assert not JobError.objects.filter(job_id__in=ids).exists()
    assert TaskResult.objects.filter(task_id__in=[str(i) for i in ids]).count() == len(ids)

    # Each job's run started once in all: one `running` line across both workers' logs.
    logs = cpu_worker.log() + other_worker.log()
    for job in jobs:
        assert len(re.findall(rf"event=running job={job.id}\b", logs)) == 1, job
    assert not re.search(r"Task jobs\.count_primes\[", other_worker.log())
    assert not re.search(r"Task jobs\.(noop|steps|fan_out)\[", cpu_worker.log())
