"""A project's plain Celery tasks, tracked in the ledger (JOBS_TRACK_CELERY_TASKS): recorded when published, their
state following Celery's, run again and cancelled from the platform, their history kept across restarts."""
import pytest

from jobs import selectors, services
from jobs.models import Job
from tests import celery_tasks_for_tests as project_tasks
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
S = Job.Status


@pytest.fixture(autouse=True)
def tracking(settings):
    settings.JOBS_TRACK_CELERY_TASKS = ["tests.celery_tasks_for_tests.*"]


def job_in(job_id, *statuses, timeout=30):
    return wait_for(lambda: Job.objects.filter(pk=job_id, status__in=statuses).first(), timeout=timeout,
                    message=f"task {job_id} to be {'/'.join(statuses)}")


def test_a_tracked_task_is_recorded_when_published_and_follows_celery(live_worker):
    sent = project_tasks.divide.delay(6, 3)
    recorded = Job.objects.get(pk=sent.id)  # at publish, before any worker saw it
    assert recorded.tracked and recorded.kind == "tests.celery_tasks_for_tests.divide"
    assert recorded.params == {"args": [6, 3], "kwargs": {}} and recorded.queue == "default"
    done = job_in(sent.id, S.SUCCEEDED)
    assert done.attempts == 1 and done.worker == live_worker.hostname and done.finished_at >= done.started_at
    assert sent.get(timeout=10) == 2.0  # Celery's own result, as before
    assert selectors.job_result_value(job=done) == 2.0


def test_a_failure_is_kept_and_the_task_runs_again_with_its_arguments(live_worker, tmp_path):
    marker = tmp_path / "ready"
    sent = project_tasks.needs_file.delay(str(marker))
    failed = job_in(sent.id, S.FAILED)
    assert failed.error.startswith("FileNotFoundError") and str(marker) in failed.error
    [error] = failed.errors.all()
    assert error.exception_class == "builtins.FileNotFoundError" and "Traceback" in error.traceback
    marker.write_text("here now")
    services.job_retry(job=failed)
    done = job_in(sent.id, S.SUCCEEDED)
    assert selectors.job_result_value(job=done) == "here now"
    assert done.errors.count() == 1  # the first run's failure stays in its history


def test_celerys_own_retries_show_as_retrying_then_succeeded(live_worker, tmp_path):
    sent = project_tasks.retries_until_file.delay(str(tmp_path / "made"))
    done = job_in(sent.id, S.SUCCEEDED)
    assert done.attempts == 2 and selectors.job_result_value(job=done) == "found on try 2"
    [retry] = done.errors.all()
    assert retry.error.startswith("FileNotFoundError")


def test_cancel_revokes_a_waiting_task(worker_factory, redis_server):
    sent = project_tasks.divide.delay(1, 1)
    services.job_cancel(job=Job.objects.get(pk=sent.id))
    worker = worker_factory()
    assert Job.objects.get(pk=sent.id).status == S.CANCELLED
    # The worker got the revoke before the message: it skips the task, and it stays cancelled.
    wait_for(lambda: "Discarding revoked task" in worker.log(), timeout=30,
             message="the worker to skip the revoked task")
    assert Job.objects.get(pk=sent.id).status == S.CANCELLED


def test_platform_housekeeping_leaves_tracked_tasks_alone(user, redis_server):
    """No claim, no lease, no recovery: the platform never sends a tracked task by itself."""
    from datetime import timedelta

    from django.utils import timezone

    sent = project_tasks.divide.delay(1, 2)  # no worker: it waits
    redis_server.client().flushall()  # its message lost
    Job.objects.filter(pk=sent.id).update(published_at=timezone.now() - timedelta(hours=1))
    assert services.recover_jobs(stale_after=0)["republished"] == 0
    Job.objects.filter(pk=sent.id).update(published_at=None)
    assert services.jobs_publish_due() == 0
    assert Job.objects.get(pk=sent.id).status == S.QUEUED


def test_untracked_tasks_and_platform_jobs_are_not_recorded_as_tracked(settings, user):
    settings.JOBS_TRACK_CELERY_TASKS = ["someone.else.*"]
    project_tasks.divide.delay(1, 2)
    assert not Job.objects.exists()
    settings.JOBS_TRACK_CELERY_TASKS = ["*"]
    job = services.job_submit(user=user, kind="noop").job
    assert Job.objects.get().pk == job.pk and not Job.objects.get().tracked
