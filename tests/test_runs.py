"""The runs service on its own: the claim, the finish and the one "a run failed" transition."""
import logging
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from jobs import selectors, services
from jobs.models import Job, JobError
from jobs.registry import get_kind

pytestmark = pytest.mark.django_db
S = Job.Status


@pytest.fixture
def noop():
    return get_kind("noop")


@pytest.fixture
def job(user):
    job = services.job_submit(user=user, kind="noop").job
    Job.objects.filter(pk=job.pk).update(attempt_limit=3)  # noop's own is 1: room for retries
    job.refresh_from_db()
    return job


def claim(job, noop, worker="w1"):
    return services.job_claim(job_id=str(job.id), kind=noop, worker=worker)


def test_the_claim_takes_a_queued_job_once(job, noop):
    first = claim(job, noop)
    job.refresh_from_db()
    assert first.attempt == 1 and job.status == S.RUNNING and job.claim_token == first.token
    assert job.worker == "w1" and job.lease_expires_at > timezone.now()
    assert claim(job, noop, worker="w2") is None, "a second delivery finds it running"
    job.refresh_from_db()
    assert job.worker == "w1" and job.attempts == 1


def test_a_finished_or_cancelled_job_is_not_claimed(job, noop, user):
    services.job_cancel(job=job)
    assert claim(job, noop) is None
    other = services.job_submit(user=user, kind="noop").job
    run = claim(other, noop)
    assert services.job_succeed(job_id=str(other.id), claim=run, kind=noop, params={}, result=None, worker="w1")
    assert claim(other, noop) is None


def test_a_running_job_is_claimed_again_once_its_lease_is_over(job, noop):
    first = claim(job, noop)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    second = claim(job, noop, worker="w2")
    assert second.attempt == 2 and second.token != first.token
    assert not services.job_succeed(job_id=str(job.id), claim=first, kind=noop, params={}, result=1, worker="w1"), \
        "the run that lost the job cannot finish it"


def test_no_claim_past_the_attempt_limit(job, noop):
    Job.objects.filter(pk=job.pk).update(attempts=job.attempt_limit)
    assert claim(job, noop) is None


def test_the_finish_records_one_result_and_replaces_what_celery_wrote(job, noop):
    run = claim(job, noop)
    TaskResult.objects.create(task_id=str(job.id), status="RETRY", result='{"exc_type": "Retry"}')
    assert services.job_succeed(job_id=str(job.id), claim=run, kind=noop, params={}, result={"n": 1}, worker="w1")
    job.refresh_from_db()
    assert job.status == S.SUCCEEDED and job.claim_token is None and job.finished_at is not None
    assert TaskResult.objects.filter(task_id=str(job.id)).count() == 1
    assert TaskResult.objects.get(task_id=str(job.id)).status == "SUCCESS"
    assert selectors.job_result_value(job=job) == {"n": 1}


def test_a_retryable_failure_with_attempts_left_retries(job, noop):
    run = claim(job, noop)
    outcome = services.job_run_failed(job_id=str(job.id), token=run.token, error="boom", retryable=True)
    job.refresh_from_db()
    assert outcome.retry_in is not None and outcome.attempt == 1
    assert job.status == S.RETRYING and job.next_attempt_at is not None and job.error == "boom"
    assert list(JobError.objects.filter(job=job).values_list("attempt", "error")) == [(1, "boom")]
    assert not TaskResult.objects.filter(task_id=str(job.id)).exists()


def test_a_failure_that_is_not_retryable_fails_the_job_with_its_result(job, noop):
    run = claim(job, noop)
    outcome = services.job_run_failed(job_id=str(job.id), token=run.token, error="bad input", retryable=False)
    job.refresh_from_db()
    assert outcome.retry_in is None and job.status == S.FAILED and job.finished_at is not None
    assert TaskResult.objects.get(task_id=str(job.id)).status == "FAILURE"


def test_the_last_attempt_fails_for_good(job, noop):
    Job.objects.filter(pk=job.pk).update(attempts=2)
    run = claim(job, noop)
    assert services.job_run_failed(job_id=str(job.id), token=run.token, error="x", retryable=True).retry_in is None
    job.refresh_from_db()
    assert job.status == S.FAILED


def test_a_failure_of_a_run_that_lost_the_job_writes_nothing(job, noop):
    first = claim(job, noop)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    claim(job, noop, worker="w2")
    assert services.job_run_failed(job_id=str(job.id), token=first.token, error="late", retryable=True) is None
    job.refresh_from_db()
    assert job.status == S.RUNNING and job.worker == "w2" and not JobError.objects.filter(job=job).exists()


def test_a_failure_seen_from_outside_the_run_takes_whatever_run_holds_the_job(job, noop):
    claim(job, noop)
    outcome = services.job_run_failed(job_id=str(job.id), token=None, error="worker lost", retryable=True)
    assert outcome is not None and outcome.retry_in is not None
    assert services.job_run_failed(job_id=str(job.id), token=None, error="again", retryable=True) is None


def test_events_are_logged_once_committed_and_not_when_rolled_back(job, noop, caplog,
                                                                   django_capture_on_commit_callbacks):
    class Abort(Exception):
        pass

    with caplog.at_level(logging.INFO, logger="jobs.events"):
        with django_capture_on_commit_callbacks(execute=True):
            with pytest.raises(Abort), transaction.atomic():
                claim(job, noop)
                raise Abort
        assert not [r for r in caplog.records if "event=running" in r.getMessage()]
        with django_capture_on_commit_callbacks(execute=True):
            claim(job, noop)
    assert [r.fields["attempt"] for r in caplog.records if getattr(r, "fields", {}).get("event") == "running"] == [1]
