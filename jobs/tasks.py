"""The Celery side of a job: each kind's task claims the job, runs it, reports progress and finishes it."""
from __future__ import annotations

import json
import logging
import time
import traceback as tb
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun
from celery.worker.request import Request
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection
from django.utils import timezone

from . import metrics, services
from .backpressure import gauge
from .models import Job
from .registry import JobKind, get_kind

logger = logging.getLogger(__name__)


@task_prerun.connect
@task_postrun.connect
def _recycle_db_connections(sender=None, **kwargs) -> None:
    """Per task what Django does per request: drop a connection that is broken or past CONN_MAX_AGE, keep the rest."""
    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


class JobCancelled(Exception):
    """Raised inside a run at its next progress check once the job is cancelled or taken over."""


class JobContext:
    """What a kind's function gets besides its parameters: its job id, progress and cancellation."""

    # Progress is written at most this often, so that a tight loop costs no database writes.
    PROGRESS_INTERVAL = 1.0

    def __init__(self, *, job_id: str, claim: services.Claim | None, kind: JobKind):
        self.job_id = job_id
        self.kind = kind
        self._claim = claim
        self._last_write = 0.0
        self._attempt: int | None = claim.attempt if claim is not None and claim.attempt else None

    @property
    def attempt(self) -> int:
        """Which run of the job this is, from 1 (read once, on first use)."""
        if self._attempt is None:
            self._attempt = Job.objects.filter(pk=self.job_id).values_list("attempts", flat=True).first() or 1
        return self._attempt

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report progress (throttled) and stop the run here if the job was cancelled."""
        now = time.monotonic()
        if now - self._last_write < self.PROGRESS_INTERVAL and done < total:
            return
        self._last_write = now
        if self._claim is None:
            return
        try:
            current = services.job_progress(job_id=self.job_id, token=self._claim.token, done=done, total=total,
                                            message=message)
        except DATABASE_DOWN as exc:
            # Progress is advice: the run goes on, and the next report tries again.
            _database_down("progress", self.job_id, exc)
            return
        if not current:
            raise JobCancelled(self.job_id)

    def check_cancelled(self) -> None:
        """Stop the run now if the job was cancelled; for kinds with long steps between progress."""
        if self._claim is None:
            return
        try:
            current = services.job_is_current(job_id=self.job_id, token=self._claim.token)
        except DATABASE_DOWN as exc:
            _database_down("cancellation check", self.job_id, exc)
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


# What a database that is down, restarting, failing over or locked (SQLite) raises; a bug's error is not here.
DATABASE_DOWN = (OperationalError, InterfaceError)


def _database_down(what: str, job_id: str, exc: Exception, retry_in: float | None = None) -> None:
    logger.warning("database unavailable for %s job=%s retry_in=%s error=%r", what, job_id,
                   "-" if retry_in is None else f"{retry_in:.2f}", str(exc)[:200])
    # A connection the server dropped stays broken: the next query opens a new one.
    if not connection.in_atomic_block:
        connection.close()


def _with_database_retry(write, *, what: str, job_id: str):
    """Run one of the run's writes, trying again with backoff while the database is down.

    The claim and the finish are conditional on the claim token, so trying again is safe.
    A finish that still cannot be written after JOBS_DB_RETRY_SECONDS leaves the job running:
    recovery runs it again once its lease is over.
    """
    deadline = time.monotonic() + settings.JOBS_DB_RETRY_SECONDS
    attempt = 0
    while True:
        try:
            return write()
        except DATABASE_DOWN as exc:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            delay = min(left, max(0.1, services.full_jitter_backoff(attempt, base=0.5, cap=5.0)))
            _database_down(what, job_id, exc, retry_in=delay)
            time.sleep(delay)


def execute_job(*, kind: JobKind, job_id: str, params: dict, worker: str, task: Task | None = None) -> str:
    """Claim, run and finish one job. Returns what happened, for the worker's log and Flower."""
    claim = _with_database_retry(lambda: services.job_claim(job_id=job_id, kind=kind, worker=worker), what="claim",
                                 job_id=job_id)
    if claim is None:
        logger.info("dropped message for a job that is not claimable job=%s kind=%s", job_id, kind.name)
        return "dropped: job already running, finished or cancelled"
    gauge.record_drained()
    metrics.job_claimed(kind=kind.name, queue=kind.queue, request=task.request if task is not None else None)
    ctx = JobContext(job_id=job_id, claim=claim, kind=kind)
    try:
        parsed = kind.params_model.model_validate(params)
        result = _json_safe(kind.func(ctx, parsed))
    except JobCancelled:
        logger.info("run stopped: job cancelled job=%s kind=%s", job_id, kind.name)
        metrics.run_stopped(kind=kind.name, queue=kind.queue,
                            run_seconds=(timezone.now() - claim.started_at).total_seconds())
        return "cancelled"
    except SoftTimeLimitExceeded:
        limit = task.soft_time_limit if task is not None else kind.soft_time_limit
        trace = tb.format_exc()
        _with_database_retry(lambda: services.job_attempt_failed(
            job_id=job_id, token=claim.token, kind=kind, params=params, error=f"timed out after {limit}s",
            traceback=trace, worker=worker, retryable=False,
        ), what="failure", job_id=job_id)
        raise
    except Exception as exc:
        trace = tb.format_exc()
        outcome = _with_database_retry(lambda: services.job_attempt_failed(
            job_id=job_id, token=claim.token, kind=kind, params=params, error=f"{type(exc).__name__}: {exc}",
            traceback=trace, worker=worker, retryable=isinstance(exc, kind.retry_on),
        ), what="failure", job_id=job_id)
        if outcome is not None and outcome.retry_in is not None and task is not None:
            raise task.retry(countdown=outcome.retry_in, exc=exc, max_retries=None) from None
        raise
    _with_database_retry(
        lambda: services.job_succeed(job_id=job_id, claim=claim, kind=kind, params=params, result=result,
                                     worker=worker),
        what="finish", job_id=job_id)
    return "succeeded"


class JobRequest(Request):
    """Records on the Job what happens to a run outside its own process: killed, or over its hard limit."""

    def on_timeout(self, soft, timeout):
        super().on_timeout(soft, timeout)
        if not soft:
            self._fail_run(f"timed out after {timeout}s (hard time limit); its process was killed", retry=False)

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        # The pool hands over the error wrapped with its traceback.
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, WorkerLostError):
            self._fail_run(f"worker process lost: {exc}", retry=True)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _fail_run(self, error: str, *, retry: bool) -> None:
        kind = get_kind(self.task.name.removeprefix("jobs."))
        job = Job.objects.filter(pk=self.id, status=Job.Status.RUNNING).first()
        if kind is None or job is None:
            return
        # With attempts left, the job becomes `retrying` and the requeued message claims it at once;
        # without, it ends `failed` and the requeued message is dropped at claim.
        services.job_attempt_failed(job_id=str(job.id), token=None, kind=kind, params=job.params, error=error,
                                    traceback="", worker=job.worker, retryable=retry)


class JobTask(Task):
    """Base class of every kind's task."""

    Request = JobRequest
    # The Job row and our own TaskResult hold the outcome; Celery writing it again would cost a
    # second write per job and could record a second result for a duplicate message.
    ignore_result = True
    track_started = False
    acks_late = True
    reject_on_worker_lost = True


def make_job_task(kind: JobKind):
    """The Celery task that runs `kind`: named after it, on its queue, with its limits."""

    def run(self, job_id: str, params: dict):
        return execute_job(kind=kind, job_id=job_id, params=params, worker=self.request.hostname or "", task=self)

    run.__name__ = kind.name
    run.__doc__ = kind.description
    options = dict(name=kind.task_name, bind=True, base=JobTask, queue=kind.queue)
    for option in ("soft_time_limit", "time_limit", "rate_limit"):
        if getattr(kind, option) is not None:
            options[option] = getattr(kind, option)
    return shared_task(**options)(run)
