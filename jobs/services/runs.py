"""A job's run, as a worker does it: claim, run with progress and cancellation, then succeed or fail.

Every transition of a running job is here: the claim (queued or retrying -> running, one
conditional UPDATE), progress, the finish (running -> succeeded, with its TaskResult), "a run
failed" (running -> retrying or failed: its code raised, or it hit its hard limit) and "a run was
lost" (running -> retrying or failed: its process or worker died, Celery stopped it, its lease
lapsed), whoever saw it end.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import traceback as tb
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from django.utils import timezone
from django_celery_results.models import TaskResult

from ..infra import broker, counters
from ..infra.broker import SoftTimeLimitExceeded
from ..infra.db import is_database_down
from ..infra.events import emit
from ..models import Job, JobError, QueuePause
from ..registry import JobKind, get_kind, hard_time_limit
from . import statements

logger = logging.getLogger(__name__)
S = Job.Status


class JobCancelled(Exception):
    """Raised inside a run at its next progress check once the job is cancelled or taken over."""


@dataclass(frozen=True)
class Claim:
    token: uuid.UUID
    started_at: datetime
    attempt: int  # which run of the job this is, from 1


@dataclass(frozen=True)
class FailureOutcome:
    retry_in: float | None  # seconds until the next attempt, or None when the job failed for good
    attempt: int


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def full_jitter_backoff(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))


def job_claim(*, job_id: str, kind: JobKind, worker: str, wait_seconds: float | None = None,
              lease_seconds: float | None = None) -> Claim | None:
    """Take the job for this run: one conditional UPDATE. None when another run has it or it is over.

    The run holds a lease of JOBS_LEASE_SECONDS (or `lease_seconds`), which its worker's heartbeat
    renews while the run lives. A running job is claimable again only once its lease has lapsed,
    so a redelivered message cannot run it twice at once.
    """
    now = timezone.now()
    token = uuid.uuid4()
    lease = now + timedelta(seconds=settings.JOBS_LEASE_SECONDS if lease_seconds is None else lease_seconds)
    attempt = statements.claim(job_id=job_id, token=token, worker=worker[:200], now=now, lease=lease)
    if attempt is None:
        _hand_back_if_paused(job_id)
        return None
    emit("running", job_id=job_id, kind=kind.name, queue=kind.queue, attempt=attempt, wait_seconds=wait_seconds,
         worker=worker)
    counters.record_drained(kind.queue)
    return Claim(token=token, started_at=now, attempt=attempt)


def _hand_back_if_paused(job_id: str) -> None:
    """The claim refused a waiting job of a paused queue: mark it unpublished, so that publish-due sends it again once
    the queue is resumed (it leaves paused queues alone meanwhile). Its message is then acknowledged and dropped.

    The workers stop consuming a paused queue, so its messages stay in the broker; this covers what reaches a
    worker all the same: a message taken just before the pause reached it, a retry it held for its countdown, a
    worker that missed the broadcast, and SQS, which has no broadcast. Nothing runs while paused, nothing is lost.
    """
    if Job.objects.filter(pk=job_id, status__in=S.claimable(), tracked=False,
                          queue__in=QueuePause.objects.values("queue")).update(published_at=None):
        logger.info("handed back a job of a paused queue job=%s; it is published again on resume", job_id)


def job_progress(*, job_id: str, token: uuid.UUID, done: int, total: int, message: str) -> bool:
    """Record progress; False when the run no longer owns the job (cancelled, or taken over)."""
    return bool(Job.objects.filter(pk=job_id, claim_token=token, status=S.RUNNING).update(
        progress_done=max(0, int(done)), progress_total=max(0, int(total)), progress_message=str(message)[:500],
        updated_at=timezone.now()))


def job_is_current(*, job_id: str, token: uuid.UUID) -> bool:
    return Job.objects.filter(pk=job_id, claim_token=token, status=S.RUNNING).exists()


def _result_row(*, job_id: str, kind_name: str, params: dict, status: str, result, traceback: str = "",
                worker: str = "", started_at=None) -> statements.Insert:
    """The job's TaskResult, prepared: it replaces any row Celery wrote for the same id."""
    content_type, content_encoding, encoded = broker.encode_result(result)
    _, _, meta = broker.encode_result({"children": []})
    row = TaskResult(task_id=job_id, task_name=f"jobs.{kind_name}", task_args=json.dumps([job_id, params]),
                     task_kwargs="{}", status=status, worker=worker[:100], content_type=content_type,
                     content_encoding=content_encoding, result=encoded, traceback=traceback or None, meta=meta,
                     date_started=started_at)
    return statements.Insert(row, replace_on="task_id")


def job_succeed(*, job_id: str, claim: Claim, kind: JobKind, params: dict, result, worker: str) -> bool:
    """Finish the run: one conditional UPDATE and the TaskResult, in one transaction.

    False (and nothing written) when the run no longer owns the job, so that a job never
    records two results.
    """
    now = timezone.now()
    # Everything is prepared before BEGIN: on SQLite the write lock is held from there to COMMIT.
    finish = statements.Finish(job_id=job_id, token=claim.token, now=now)
    result_row = _result_row(job_id=job_id, kind_name=kind.name, params=params, status="SUCCESS", result=result,
                             worker=worker, started_at=claim.started_at)
    with transaction.atomic(using=finish.alias):
        if not finish.run():
            return False
        result_row.run()
        emit("succeeded", job_id=job_id, kind=kind.name, queue=kind.queue, attempt=claim.attempt,
             run_seconds=(now - claim.started_at).total_seconds())
    return True


@transaction.atomic
def job_run_failed(*, job_id: str, token: uuid.UUID | None, error: str, traceback: str = "",
                   retryable: bool, worker: str | None = None, exception_class: str = "") -> FailureOutcome | None:
    """A run failed: record its attempt, then retry the job (retryable, attempts left) after a backoff, or fail it.

    With `token`, only if that run still owns the job; with None, the run `worker` holds (Celery
    killed it at its hard limit, or terminated it). None when there was no such run (nothing
    written). The retry's message is Celery's (sent with the backoff as countdown).
    """
    job = _running_locked(job_id, claim_token=token, worker=worker)
    if job is None:
        return None
    kind = get_kind(job.kind)
    retry_in = None
    if retryable and kind is not None and job.attempts < job.attempt_limit:
        retry_in = full_jitter_backoff(job.attempts, base=kind.retry_backoff_base, cap=kind.retry_backoff_max)
    return _end_run(job, error=error, traceback=traceback, retry_in=retry_in, republish=False,
                    exception_class=exception_class)


@transaction.atomic
def job_run_lost(*, job_id: str, error: str, worker: str | None = None, lapsed_before: datetime | None = None,
                 handed_back: bool = False) -> FailureOutcome | None:
    """A run ended outside its own code: its process or worker died, Celery stopped it, or its lease lapsed.

    With attempts left the job is `retrying` at once, with no backoff (its code did not fail), and
    marked unpublished, so that the next publish-due (a worker's heartbeat or beat, within
    seconds) sends it a new message whatever the broker still holds; the old message, should it
    come back, is dropped at claim. Without attempts left it fails.

    `worker`: only if that worker holds the run. `lapsed_before`: only if its lease ended before
    then. `handed_back` (a shutdown, a lost broker connection): the run gives its attempt back, as
    it was stopped through no fault of its own. None when there was no such run (nothing written).
    """
    job = _running_locked(job_id, worker=worker, lease_expires_at__lt=lapsed_before)
    if job is None:
        return None
    attempts_left = job.attempts - (1 if handed_back else 0) < job.attempt_limit
    return _end_run(job, error=error, traceback="", retry_in=0.0 if attempts_left else None, republish=True,
                    give_back=handed_back)


def _running_locked(job_id: str, **conditions) -> Job | None:
    """The running job, its row locked to the end of the caller's transaction, if it meets the conditions given
    (None values are left out); else None."""
    given = {field: value for field, value in conditions.items() if value is not None}
    return Job.objects.select_for_update().filter(pk=job_id, status=S.RUNNING, **given).first()


def _end_run(job: Job, *, error: str, traceback: str, retry_in: float | None, republish: bool,
             give_back: bool = False, exception_class: str = "") -> FailureOutcome:
    """Record the run's attempt, then make the job `retrying` (after `retry_in`) or `failed`; inside the caller's
    transaction, with the job's row locked."""
    now = timezone.now()
    run_seconds = (now - job.started_at).total_seconds() if job.started_at else None
    JobError.objects.create(job=job, attempt=job.attempts, error=error[:10_000], traceback=traceback,
                            worker=job.worker, exception_class=exception_class[:300])
    if retry_in is not None:
        next_at = now + timedelta(seconds=retry_in)
        Job.objects.filter(pk=job.pk).update(
            status=S.RETRYING, claim_token=None, lease_expires_at=None, error=error[:2000], next_attempt_at=next_at,
            # Unpublished: publish-due sends its message. Else Celery's retry message is on its way.
            published_at=None if republish else next_at,
            attempts=F("attempts") - 1 if give_back else F("attempts"), updated_at=now)
        emit("retrying", job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempts,
             run_seconds=run_seconds, retry_in=f"{retry_in:.2f}", handed_back=give_back, error=error[:200])
        return FailureOutcome(retry_in=retry_in, attempt=job.attempts)
    Job.objects.filter(pk=job.pk).update(status=S.FAILED, claim_token=None, lease_expires_at=None,
                                         error=error[:2000], finished_at=now, updated_at=now)
    _result_row(job_id=str(job.id), kind_name=job.kind, params=job.params, status="FAILURE",
                result={"exc_type": "JobFailed", "exc_message": [error[:2000]], "exc_module": "builtins"},
                traceback=traceback, worker=job.worker, started_at=job.started_at).run()
    emit("failed", job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempts, run_seconds=run_seconds,
         error=error[:200])
    return FailureOutcome(retry_in=None, attempt=job.attempts)


# --- Running a job -------------------------------------------------------------------


class JobContext:
    """What a kind's function gets besides its parameters: its job id, attempt, progress and cancellation."""

    # Progress is written at most this often, so that a tight loop costs no database writes.
    PROGRESS_INTERVAL = 1.0

    def __init__(self, *, job_id: str, claim: Claim, kind: JobKind):
        self.job_id = job_id
        self.kind = kind
        self.attempt = claim.attempt
        self._claim = claim
        self._last_write = 0.0

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report progress (throttled) and stop the run here if the job was cancelled."""
        now = time.monotonic()
        if now - self._last_write < self.PROGRESS_INTERVAL and done < total:
            return
        self._last_write = now
        self._stop_unless(lambda: job_progress(job_id=self.job_id, token=self._claim.token, done=done, total=total,
                                               message=message), "progress")

    def check_cancelled(self) -> None:
        """Stop the run now if the job was cancelled; for kinds with long steps between progress."""
        self._stop_unless(lambda: job_is_current(job_id=self.job_id, token=self._claim.token), "cancellation check")

    def _stop_unless(self, still_ours, what: str) -> None:
        try:
            current = still_ours()
        except Exception as exc:
            if not is_database_down(exc):
                raise
            # Progress is advice: the run goes on, and the next report tries again.
            _database_down(what, self.job_id, exc)
            return
        if not current:
            raise JobCancelled(self.job_id)


def _json_safe(result: Any) -> Any:
    """Results are stored as JSON: refuse anything else with a clear error rather than mangle it."""
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the job's result is not JSON: {exc}") from None
    return result


def _database_down(what: str, job_id: str, exc: Exception, retry_in: float | None = None) -> None:
    logger.warning("database unavailable for %s job=%s retry_in=%s error=%r", what, job_id,
                   "-" if retry_in is None else f"{retry_in:.2f}", str(exc)[:200])
    # A connection the server dropped stays broken: the next query opens a new one.
    if not connection.in_atomic_block:
        connection.close()


def _with_database_retry(write, *, what: str, job_id: str):
    """Run one of the run's writes, trying again with backoff while the database is down.

    The claim and the finish are conditional on the claim token, so trying again is safe. A
    write that still fails after JOBS_DB_RETRY_SECONDS leaves the job running: recovery runs
    it again once its lease is over.
    """
    deadline = time.monotonic() + settings.JOBS_DB_RETRY_SECONDS
    attempt = 0
    while True:
        try:
            return write()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_database_down(exc) or left <= 0:
                raise
            attempt += 1
            delay = min(left, max(0.1, full_jitter_backoff(attempt, base=0.5, cap=5.0)))
            _database_down(what, job_id, exc, retry_in=delay)
            time.sleep(delay)


@dataclass(frozen=True)
class RunOutcome:
    """What a run came to: `succeeded`, `failed`, `retrying` (after `retry_in`), `cancelled` or `dropped`.

    `error` is what a failed or retrying run raised, for Celery to record as the task's own failure.
    """

    status: str
    retry_in: float | None = None
    error: BaseException | None = None


def execute_job(*, kind: JobKind, job_id: str, params: dict, worker: str,
                wait_seconds: float | None = None, lease_seconds: float | None = None) -> RunOutcome:
    """Claim, run and finish one job; what Celery must do next (retry after `retry_in`) is in the outcome.

    A run past its soft time limit fails for good: it would most likely time out again.
    """
    claim = _with_database_retry(lambda: job_claim(job_id=job_id, kind=kind, worker=worker, wait_seconds=wait_seconds,
                                                   lease_seconds=lease_seconds), what="claim", job_id=job_id)
    if claim is None:
        logger.info("dropped message for a job that is not claimable job=%s kind=%s", job_id, kind.name)
        return RunOutcome("dropped")
    ctx = JobContext(job_id=job_id, claim=claim, kind=kind)
    try:
        parsed = kind.params_model.model_validate(params)
        result = _json_safe(kind.func(ctx, parsed))
    except JobCancelled:
        logger.info("run stopped: job cancelled job=%s kind=%s", job_id, kind.name)
        emit("stopped", job_id=job_id, kind=kind.name, queue=kind.queue, attempt=claim.attempt,
             run_seconds=(timezone.now() - claim.started_at).total_seconds())
        return RunOutcome("cancelled")
    except SoftTimeLimitExceeded as exc:
        limit = kind.soft_time_limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
        return _failed(job_id, claim, exc, error=f"timed out after {limit}s", retryable=False)
    except Exception as exc:  # noqa: BLE001 - any error of the kind's code is the run's failure
        return _failed(job_id, claim, exc, error=f"{type(exc).__name__}: {exc}",
                       retryable=isinstance(exc, kind.retry_on))
    _with_database_retry(lambda: job_succeed(job_id=job_id, claim=claim, kind=kind, params=params, result=result,
                                             worker=worker), what="finish", job_id=job_id)
    return RunOutcome("succeeded")


def _failed(job_id: str, claim: Claim, exc: BaseException, *, error: str, retryable: bool) -> RunOutcome:
    trace = tb.format_exc()
    exception_class = f"{type(exc).__module__}.{type(exc).__qualname__}"
    outcome = _with_database_retry(lambda: job_run_failed(job_id=job_id, token=claim.token, error=error,
                                                          traceback=trace, retryable=retryable,
                                                          exception_class=exception_class),
                                   what="failure", job_id=job_id)
    if outcome is not None and outcome.retry_in is not None:
        return RunOutcome("retrying", retry_in=outcome.retry_in, error=exc)
    return RunOutcome("failed", error=exc)


def run_inline(*, job: Job, kind: JobKind) -> None:
    """Run a cheap kind in the request, through the same claim and finish as a worker."""
    # No heartbeat renews an inline run's lease: it lasts the kind's hard limit.
    execute_job(kind=kind, job_id=str(job.id), params=job.params, worker=f"inline@{worker_name()}",
                lease_seconds=hard_time_limit(kind) + 5)
    job.refresh_from_db()
