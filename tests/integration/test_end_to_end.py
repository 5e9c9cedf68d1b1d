"""One job through every part: service, commit, Redis, a real worker, TaskResult, finished Job."""
import pytest
from django_celery_results.models import TaskResult

from jobs import selectors, services
from jobs.models import Job
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_job_flows_from_service_to_stored_result(live_worker, user):
    job = services.job_submit(user=user, kind="count_primes", params={"limit": 100_000}).job

    finished = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).first(), timeout=30,
                        message="the job to succeed")
    result = TaskResult.objects.get(task_id=str(job.id))
    assert result.status == "SUCCESS"
    assert result.task_name == "jobs.count_primes"
    assert selectors.job_result_value(job=finished) == {"limit": 100_000, "primes": 9592, "largest": 99991}
    assert finished.attempts == 1
    assert finished.started_at is not None and finished.finished_at >= finished.started_at
    assert finished.worker == live_worker.hostname


def test_celery_async_result_reads_the_same_id(live_worker, user):
    from celery.result import AsyncResult

    job = services.job_submit(user=user, kind="count_primes", params={"limit": 1000}).job
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).exists(), timeout=30,
             message="the job to succeed")
    assert AsyncResult(str(job.id)).result == {"limit": 1000, "primes": 168, "largest": 997}
