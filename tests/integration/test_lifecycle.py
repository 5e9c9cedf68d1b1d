"""Each kind and each lifecycle path with a real worker: progress, retries, cancel, manual retry, duplicates."""
import pytest
from django_celery_results.models import TaskResult

from jobs import selectors, services
from jobs.models import Job, JobError, TimelineEntry
from jobs.registry import get_kind
from tests.support import publish_again, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
S = Job.Status


def job_in(job_id, *statuses, timeout=30):
    return wait_for(lambda: Job.objects.filter(pk=job_id, status__in=statuses).first(), timeout=timeout,
                    message=f"job {job_id} to be {'/'.join(statuses)}")


def test_steps_job_reports_progress_while_running(live_worker, user):
    job = services.job_submit(user=user, kind="steps", params={"steps": 4, "step_seconds": 0.6}).job
    seen = set()

    def progress_seen():
        current = Job.objects.get(pk=job.pk)
        if current.status == S.RUNNING and current.progress_total:
            seen.add(current.progress_done)
        return len(seen) >= 2 or current.status == S.SUCCEEDED

    wait_for(progress_seen, timeout=30, message="progress updates")
    finished = job_in(job.pk, S.SUCCEEDED)
    assert len(seen) >= 2, f"progress seen: {seen}"
    assert finished.progress_message == "step 4 of 4" and finished.progress_percent == 100
    assert selectors.job_result_value(job=finished)["steps"] == 4


def test_retryable_failure_backs_off_then_fails_after_max_attempts(live_worker, user):
    job = services.job_submit(user=user, kind="steps", params={"steps": 2, "step_seconds": 0, "fail_at_step": 1}).job
    job_in(job.pk, S.RETRYING)
    failed = job_in(job.pk, S.FAILED, timeout=60)
    assert failed.attempts == 3 == get_kind("steps").max_attempts
    errors = list(JobError.objects.filter(job=job).order_by("attempt"))
    assert [e.attempt for e in errors] == [1, 2, 3]
    assert all("told to fail at step 1" in e.error and "StepFailed" in e.traceback for e in errors)
    result = TaskResult.objects.get(task_id=str(job.id))
    assert result.status == "FAILURE" and "StepFailed" in result.traceback


def test_retry_succeeds_once_the_error_goes_away(live_worker, user):
    job = services.job_submit(
        user=user, kind="steps", params={"steps": 2, "step_seconds": 0, "fail_at_step": 2, "fail_attempts": 1}
    ).job
    done = job_in(job.pk, S.SUCCEEDED, timeout=60)
    assert done.attempts == 2
    assert JobError.objects.filter(job=job).count() == 1
    assert TaskResult.objects.filter(task_id=str(job.id)).count() == 1


def test_backoff_is_exponential_with_full_jitter():
    delays = [services.full_jitter_backoff(attempt, base=1.0, cap=600) for attempt in (1, 5, 12) for _ in range(200)]
    first, fifth, twelfth = delays[:200], delays[200:400], delays[400:]
    assert all(0 <= d <= 1 for d in first) and all(0 <= d <= 16 for d in fifth) and all(d <= 600 for d in twelfth)
    assert max(fifth) > 8 and min(fifth) < 8  # spread over the whole window, not a fixed step
    assert max(twelfth) > 300


def test_manual_retry_reruns_a_failed_job_with_its_parameters(live_worker, user):
    params = {"steps": 1, "step_seconds": 0, "fail_at_step": 1, "fail_attempts": 3}
    job = services.job_submit(user=user, kind="steps", params=params).job
    failed = job_in(job.pk, S.FAILED, timeout=60)
    services.job_retry(job=failed)
    done = job_in(job.pk, S.SUCCEEDED, timeout=30)
    assert done.params == {**params, "step_seconds": 0.0} and done.attempts == 4
    result = TaskResult.objects.get(task_id=str(job.id))
    assert result.status == "SUCCESS"


def test_cancel_stops_a_running_job_at_its_next_progress_check(live_worker, user):
    job = services.job_submit(user=user, kind="steps", params={"steps": 200, "step_seconds": 0.2}).job
    running = job_in(job.pk, S.RUNNING)
    services.job_cancel(job=running)
    assert wait_for(lambda: "run stopped: job cancelled" in live_worker.log(), timeout=10,
                    message="the run to stop")
    cancelled = Job.objects.get(pk=job.pk)
    assert cancelled.status == S.CANCELLED and cancelled.progress_done < 200
    assert not TaskResult.objects.filter(task_id=str(job.id)).exists()
    # The worker is free again.
    follow_up = services.job_submit(user=user, kind="noop").job
    job_in(follow_up.pk, S.SUCCEEDED)


def test_a_cancelled_queued_job_never_starts(worker_factory, user):
    job = services.job_submit(user=user, kind="noop").job
    services.job_cancel(job=job)
    after = services.job_submit(user=user, kind="noop").job
    worker = worker_factory(concurrency=1)
    job_in(after.pk, S.SUCCEEDED)
    cancelled = Job.objects.get(pk=job.pk)
    assert cancelled.status == S.CANCELLED and cancelled.started_at is None and cancelled.attempts == 0
    assert "dropped message" in worker.log()


def test_a_duplicated_message_runs_the_job_once(live_worker, user):
    job = services.job_submit(user=user, kind="steps", params={"steps": 3, "step_seconds": 0.3}).job
    publish_again(job)  # the same message again, while the first copy runs on the other pool process
    publish_again(job)
    job_in(job.pk, S.SUCCEEDED)
    wait_for(lambda: live_worker.log().count("dropped message") >= 2, timeout=15, message="both copies dropped")
    done = Job.objects.get(pk=job.pk)
    assert done.attempts == 1
    assert TaskResult.objects.filter(task_id=str(job.id)).count() == 1


def test_fan_out_puts_the_post_on_the_author_timeline_at_once_then_on_followers(live_worker, user):
    params = {"author_id": 7, "text": "hello followers", "ensure_followers": 1200, "batch_size": 250}
    job = services.job_submit(user=user, kind="fan_out", params=params).job
    assert TimelineEntry.objects.filter(reader_id=7, post_id=job.id).exists()
    done = job_in(job.pk, S.SUCCEEDED, timeout=60)
    assert selectors.job_result_value(job=done) == {
        "post_id": str(job.id), "author_id": 7, "followers": 1200, "delivered": 1200}
    assert TimelineEntry.objects.filter(post_id=job.id).count() == 1201
    assert not TimelineEntry.objects.filter(post_id=job.id, reader_id__lte=6).exists()


def test_scheduled_job_is_published_when_due(live_worker, user):
    from datetime import timedelta

    from django.utils import timezone

    job = services.job_submit(user=user, kind="noop", run_at=timezone.now() + timedelta(seconds=1)).job
    assert services.jobs_publish_due() == 0
    wait_for(lambda: services.jobs_publish_due() == 1, timeout=10, message="the job to fall due")
    done = job_in(job.pk, S.SUCCEEDED)
    assert done.started_at >= done.run_at


def test_an_inline_kind_scheduled_for_later_is_queued_and_a_worker_runs_it_when_due(live_worker, user):
    """Inline means "at once, in the request" for a job due now; one asked for later cannot run in the request."""
    from datetime import timedelta

    from django.utils import timezone

    outcome = services.job_submit(user=user, kind="word_count", params={"text": "later, later"},
                                  run_at=timezone.now() + timedelta(seconds=1))
    assert outcome.job.status == S.QUEUED and Job.objects.get(pk=outcome.job.pk).started_at is None
    done = job_in(outcome.job.pk, S.SUCCEEDED)
    assert done.started_at >= done.run_at and not done.worker.startswith("inline@")
    assert selectors.job_result_value(job=done)["words"] == 2


def test_cancel_terminates_a_running_job_of_a_terminable_kind(live_worker, user, tmp_path):
    marker = tmp_path / "started"
    job = services.job_submit(user=user, kind="test_terminable", params={"seconds": 120, "marker": str(marker)}).job
    job_in(job.pk, S.RUNNING)
    wait_for(marker.exists, timeout=10, message="the run to start")
    pid = int(marker.read_text().split()[0])
    services.job_cancel(job=Job.objects.get(pk=job.pk))

    def process_gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_for(process_gone, timeout=20, message="the pool process running the job to be terminated")
    assert Job.objects.get(pk=job.pk).status == S.CANCELLED
    assert not TaskResult.objects.filter(task_id=str(job.id)).exists()
    follow_up = services.job_submit(user=user, kind="noop").job
    job_in(follow_up.pk, S.SUCCEEDED)
