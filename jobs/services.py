"""Writes: submit, cancel, retry, and the worker's claim, progress and finish. The only place that publishes."""
from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, connections, router, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_celery_results.models import TaskResult
from pydantic import ValidationError

from . import metrics, prepared
from .logging import log_transition
from .models import ApiToken, Job, JobError
from .registry import JobKind, get_kind, hard_time_limit

logger = logging.getLogger(__name__)
S = Job.Status


class JobInputError(Exception):
    """The submission is invalid; `errors` names each bad field as (location, message)."""

    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class JobStateError(Exception):
    """The job is not in a state that allows the action."""


@dataclass(frozen=True)
class SubmitResult:
    job: Job
    created: bool


def validate_params(kind: JobKind, params: dict) -> dict:
    """Return the kind's parameters as plain JSON, defaults filled in, or raise JobInputError."""
    if not isinstance(params, dict):
        raise JobInputError([{"loc": ["params"], "msg": "must be an object"}])
    try:
        model = kind.params_model.model_validate(params)
    except ValidationError as exc:
        raise JobInputError(
            [{"loc": ["params", *exc_loc(e)], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None
    return model.model_dump(mode="json")


def exc_loc(error: dict) -> list:
    return [str(part) for part in error.get("loc", ())]


def job_submit(
    *,
    user,
    kind: str,
    params: dict | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    schedule_name: str = "",
) -> SubmitResult:
    """Record a job and publish it after commit (or run it now, for an inline kind)."""
    job_kind = get_kind(kind)
    if job_kind is None:
        raise JobInputError([{"loc": ["kind"], "msg": f"unknown job kind {kind!r}", "type": "unknown_kind"}])
    clean_params = validate_params(job_kind, params or {})
    if priority is not None and not 0 <= priority <= 9:
        raise JobInputError([{"loc": ["priority"], "msg": "must be 0-9", "type": "range"}])

    if idempotency_key is not None:
        existing = Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            return SubmitResult(existing, created=False)

    now = timezone.now()
    due = run_at is None or run_at <= now
    job = Job(
        id=uuid.uuid4(),
        kind=job_kind.name,
        params=clean_params,
        owner=user,
        queue=job_kind.queue,
        priority=job_kind.priority if priority is None else priority,
        idempotency_key=idempotency_key,
        schedule_name=schedule_name,
        attempt_limit=job_kind.max_attempts,
        created_at=now,
        run_at=run_at or now,
        published_at=now if due and not job_kind.inline else None,
    )
    # Prepared before the transaction: on SQLite the write lock is taken at BEGIN.
    insert = prepared.prepare_insert(job)
    try:
        with transaction.atomic():
            prepared.execute_insert(job, insert)
            if job_kind.on_submit is not None:
                job_kind.on_submit(job, clean_params)
            if due and not job_kind.inline:
                transaction.on_commit(lambda: _publish(job))
    except IntegrityError:
        # Two requests raced with the same idempotency key: the other one's job is the job.
        if idempotency_key is None:
            raise
        return SubmitResult(Job.objects.get(owner=user, idempotency_key=idempotency_key), created=False)
    log_transition("submitted", job_id=job.id, kind=job.kind, attempt=job.attempts, queue=job.queue,
                   run_at=job.run_at.isoformat())
    metrics.job_submitted(kind=job.kind, queue=job.queue)
    if job_kind.inline:
        _run_inline(job, job_kind)
    return SubmitResult(job, created=True)


def broker_priority(priority: int) -> int:
    """Our 0-9 has 9 the most urgent; Redis serves its priority 0 first."""
    return 9 - priority


def _publish(job: Job) -> None:
    """Send the job's message. A failure leaves the job queued for the recovery task to republish."""
    kind = get_kind(job.kind)
    try:
        kind.task.apply_async(
            args=(str(job.id), job.params),
            task_id=str(job.id),
            queue=job.queue,
            priority=broker_priority(job.priority),
            headers=metrics.publish_headers(),
        )
    except Exception as exc:  # noqa: BLE001 - the database keeps the job; recovery republishes it
        logger.warning("publish failed job=%s kind=%s error=%r; left for recovery", job.id, job.kind, exc)


def jobs_publish_due(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Publish queued jobs whose run_at has come. Safe to run concurrently: each job is marked once."""
    now = now or timezone.now()
    published = 0
    for job in Job.objects.due(now).order_by("run_at")[:limit]:
        with transaction.atomic():
            marked = Job.objects.filter(pk=job.pk, status=S.QUEUED, published_at__isnull=True).update(
                published_at=now
            )
            if marked:
                transaction.on_commit(lambda job=job: _publish(job))
                published += 1
    return published


def job_republish(*, job: Job) -> bool:
    """Publish a queued job's message again (its first was lost). A duplicate is dropped at claim."""
    now = timezone.now()
    marked = Job.objects.filter(pk=job.pk, status__in=S.claimable()).update(published_at=now)
    if marked:
        _publish(job)
        log_transition("republished", job_id=job.id, kind=job.kind, attempt=job.attempts)
    return bool(marked)


def job_cancel(*, job: Job) -> Job:
    """Cancel a job that has not finished: a queued one never starts, a running one stops at its next check."""
    now = timezone.now()
    was_running = job.status == S.RUNNING
    changed = Job.objects.filter(pk=job.pk, status__in=[S.QUEUED, S.RETRYING, S.RUNNING]).update(
        status=S.CANCELLED, cancelled_at=now, finished_at=now, claim_token=None, updated_at=now
    )
    if not changed:
        job.refresh_from_db()
        raise JobStateError(f"a {job.status} job cannot be cancelled")
    kind = get_kind(job.kind)
    if was_running and kind is not None and kind.terminable:
        from celery import current_app

        current_app.control.revoke(str(job.id), terminate=True, signal="SIGTERM")
    log_transition("cancelled", job_id=job.id, kind=job.kind, attempt=job.attempts)
    metrics.job_finished(kind=job.kind, queue=job.queue, status=S.CANCELLED)
    job.refresh_from_db()
    return job


@transaction.atomic
def job_retry(*, job: Job) -> Job:
    """Run a failed or cancelled job again with its original parameters and a fresh attempt budget."""
    kind = get_kind(job.kind)
    if kind is None:
        raise JobStateError(f"job kind {job.kind!r} no longer exists")
    now = timezone.now()
    changed = Job.objects.filter(pk=job.pk, status__in=[S.FAILED, S.CANCELLED]).update(
        status=S.QUEUED,
        attempt_limit=F("attempts") + kind.max_attempts,
        claim_token=None,
        error="",
        progress_done=0,
        progress_total=0,
        progress_message="",
        run_at=now,
        published_at=now,
        started_at=None,
        finished_at=None,
        cancelled_at=None,
        next_attempt_at=None,
        updated_at=now,
    )
    if not changed:
        job.refresh_from_db()
        raise JobStateError(f"a {job.status} job cannot be retried")
    # The job's one result is the result of its latest run.
    TaskResult.objects.filter(task_id=str(job.id)).delete()
    job.refresh_from_db()
    transaction.on_commit(lambda: _publish(job))
    log_transition("retried", job_id=job.id, kind=job.kind, attempt=job.attempts)
    return job


# --- The worker's side ----------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Claim:
    token: uuid.UUID
    started_at: datetime
    attempt: int = 0  # which run of the job this is, from 1


def job_claim(*, job_id: str, kind: JobKind, worker: str) -> Claim | None:
    """Take the job for this run: one conditional UPDATE. None when another run has it or it is over.

    A running job is claimable again only once its lease (its hard time limit) has passed:
    its worker must be dead by then, so a redelivered message cannot run it twice at once.
    """
    now = timezone.now()
    token = uuid.uuid4()
    lease = now + timedelta(seconds=hard_time_limit(kind) + 5)
    attempt = _claim_update(job_id=job_id, token=token, worker=worker[:200], now=now, lease=lease)
    if attempt is None:
        return None
    log_transition("running", job_id=job_id, kind=kind.name, attempt=attempt, worker=worker)
    return Claim(token=token, started_at=now, attempt=attempt)


def _claim_update(*, job_id: str, token: uuid.UUID, worker: str, now: datetime, lease: datetime) -> int | None:
    """The claim's conditional UPDATE; returns the run's attempt number, or None when nothing was claimed.

    On PostgreSQL and SQLite the statement returns the attempt itself (UPDATE ... RETURNING),
    prepared once: the claim is on every job's path, and the ORM would need a second query.
    """
    connection = connections[Job.objects.db]
    if _update_returning_supported(connection):
        field = Job._meta.get_field
        at = field("started_at")
        params = [
            S.RUNNING, field("claim_token").get_db_prep_value(token, connection), worker,
            at.get_db_prep_value(now, connection), at.get_db_prep_value(lease, connection),
            at.get_db_prep_value(now, connection),
            Job._meta.pk.get_db_prep_value(job_id, connection), at.get_db_prep_value(now, connection),
            *S.claimable(), S.RUNNING, at.get_db_prep_value(now, connection),
        ]
        with connection.cursor() as cursor:
            cursor.execute(_claim_sql(connection.alias), params)
            row = cursor.fetchone()
        return row[0] if row else None
    claimable = Job.objects.filter(pk=job_id, attempts__lt=F("attempt_limit"), run_at__lte=now).filter(_claimable(now))
    claimed = claimable.update(
        status=S.RUNNING, claim_token=token, attempts=F("attempts") + 1, worker=worker, started_at=now,
        lease_expires_at=lease, next_attempt_at=None, updated_at=now,
    )
    return Job.objects.filter(pk=job_id).values_list("attempts", flat=True).first() if claimed else None


def _update_returning_supported(connection) -> bool:
    return prepared.supported(connection, sqlite_from=(3, 35))


@functools.cache
def _claim_sql(alias: str) -> str:
    """The same statement as the ORM's claim (see _claimable), with RETURNING."""
    quote = connections[alias].ops.quote_name

    def col(name: str) -> str:
        return quote(Job._meta.get_field(name).column)

    status, attempts = col("status"), col("attempts")
    return (
        f"UPDATE {quote(Job._meta.db_table)} SET {status} = %s, {col('claim_token')} = %s, "
        f"{attempts} = {attempts} + 1, {col('worker')} = %s, {col('started_at')} = %s, "
        f"{col('lease_expires_at')} = %s, {col('next_attempt_at')} = NULL, {col('updated_at')} = %s "
        f"WHERE {col('id')} = %s AND {attempts} < {col('attempt_limit')} AND {col('run_at')} <= %s "
        f"AND ({status} IN ({', '.join(['%s'] * len(S.claimable()))}) "
        f"OR ({status} = %s AND {col('lease_expires_at')} < %s)) "
        f"RETURNING {attempts}"
    )


def _claimable(now) -> Q:
    return Q(status__in=S.claimable()) | Q(status=S.RUNNING, lease_expires_at__lt=now)


def job_progress(*, job_id: str, token: uuid.UUID, done: int, total: int, message: str) -> bool:
    """Record progress; False when the run no longer owns the job (cancelled, or taken over)."""
    return bool(
        Job.objects.filter(pk=job_id, claim_token=token, status=S.RUNNING).update(
            progress_done=max(0, int(done)),
            progress_total=max(0, int(total)),
            progress_message=str(message)[:500],
            updated_at=timezone.now(),
        )
    )


def job_is_current(*, job_id: str, token: uuid.UUID) -> bool:
    return Job.objects.filter(pk=job_id, claim_token=token, status=S.RUNNING).exists()


def _task_result_row(*, job_id: str, kind: JobKind, params: dict, status: str, result, traceback: str = "",
                     worker: str = "", started_at=None) -> TaskResult:
    from celery import current_app

    backend = current_app.backend
    content_type, content_encoding, encoded = backend.encode_content(result)
    _, _, meta = backend.encode_content({"children": []})
    return TaskResult(
        task_id=job_id,
        task_name=kind.task_name,
        task_args=json.dumps([job_id, params]),
        task_kwargs="{}",
        status=status,
        worker=worker[:100],
        content_type=content_type,
        content_encoding=content_encoding,
        result=encoded,
        traceback=traceback or None,
        meta=meta,
        date_started=started_at,
    )


def _store_task_result(**row) -> None:
    # Celery itself may have written a row for this id (a run cancelled when the broker connection
    # dropped is recorded as RETRY). The caller owns the job's finish, so its result replaces it.
    prepared.insert(_task_result_row(**row), replace_on="task_id")


@functools.cache
def _finish_sql(alias: str) -> str:
    """The finish's conditional UPDATE, built once (it is on every job's path, like the claim)."""
    quote = connections[alias].ops.quote_name

    def col(name: str) -> str:
        return quote(Job._meta.get_field(name).column)

    return (
        f"UPDATE {quote(Job._meta.db_table)} SET {col('status')} = %s, {col('finished_at')} = %s, "
        f"{col('claim_token')} = NULL, {col('lease_expires_at')} = NULL, "
        f"{col('progress_done')} = {col('progress_total')}, {col('updated_at')} = %s "
        f"WHERE {col('id')} = %s AND {col('claim_token')} = %s AND {col('status')} = %s"
    )


def job_succeed(*, job_id: str, claim: Claim, kind: JobKind, params: dict, result, worker: str) -> bool:
    """Finish the run: one conditional UPDATE, and the TaskResult in the same transaction.

    False (and nothing written) when the run no longer owns the job, so that a job never
    records two results.
    """
    now = timezone.now()
    connection = connections[router.db_for_write(Job)]
    field = Job._meta.get_field
    at = field("finished_at")
    finish_params = [
        S.SUCCEEDED, at.get_db_prep_value(now, connection), at.get_db_prep_value(now, connection),
        Job._meta.pk.get_db_prep_value(job_id, connection),
        field("claim_token").get_db_prep_value(claim.token, connection), S.RUNNING,
    ]
    # Everything is prepared before BEGIN: on SQLite the write lock is held from there to COMMIT.
    row = _task_result_row(job_id=job_id, kind=kind, params=params, status="SUCCESS", result=result,
                           worker=worker, started_at=claim.started_at)
    upsert = prepared.prepare_insert(row, replace_on="task_id") if prepared.upsert_supported(connection) else None
    with transaction.atomic(using=connection.alias):
        with connection.cursor() as cursor:
            cursor.execute(_finish_sql(connection.alias), finish_params)
            finished = cursor.rowcount
        if not finished:
            return False
        if upsert is not None:
            prepared.execute_insert(row, upsert)
        else:
            prepared.insert(row, replace_on="task_id")
    log_transition("succeeded", job_id=job_id, kind=kind.name, attempt=claim.attempt or None)
    metrics.job_finished(kind=kind.name, queue=kind.queue, status=S.SUCCEEDED,
                         run_seconds=(now - claim.started_at).total_seconds())
    return True


def full_jitter_backoff(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))


@dataclass(frozen=True)
class FailureOutcome:
    retry_in: float | None  # seconds until the next attempt, or None when the job failed for good
    attempt: int


@transaction.atomic
def job_attempt_failed(
    *, job_id: str, token: uuid.UUID | None, kind: JobKind, params: dict, error: str, traceback: str,
    worker: str, retryable: bool
) -> FailureOutcome | None:
    """Record a failed run; schedule a retry when the error is retryable and attempts remain.

    None when the run no longer owns the job (nothing written). With token None, the
    failure is recorded against whatever run holds the job (a worker that died).
    """
    now = timezone.now()
    owned = Job.objects.select_for_update().filter(pk=job_id, status=S.RUNNING)
    if token is not None:
        owned = owned.filter(claim_token=token)
    job = owned.first()
    if job is None:
        return None
    JobError.objects.create(job=job, attempt=job.attempts, error=error[:10_000], traceback=traceback, worker=worker)
    if retryable and job.attempts < job.attempt_limit:
        delay = full_jitter_backoff(job.attempts, base=kind.retry_backoff_base, cap=kind.retry_backoff_max)
        next_at = now + timedelta(seconds=delay)
        Job.objects.filter(pk=job.pk).update(
            status=S.RETRYING, claim_token=None, lease_expires_at=None, error=error[:2000],
            next_attempt_at=next_at, published_at=next_at, updated_at=now,
        )
        log_transition("retrying", job_id=job_id, kind=kind.name, attempt=job.attempts, retry_in=f"{delay:.2f}",
                       error=error[:200])
        metrics.job_retrying(kind=kind.name, queue=job.queue, run_seconds=_run_seconds(job, now))
        return FailureOutcome(retry_in=delay, attempt=job.attempts)
    Job.objects.filter(pk=job.pk).update(
        status=S.FAILED, claim_token=None, lease_expires_at=None, error=error[:2000], finished_at=now,
        updated_at=now,
    )
    _store_task_result(job_id=job_id, kind=kind, params=params, status="FAILURE",
                       result={"exc_type": "JobFailed", "exc_message": [error[:2000]], "exc_module": "builtins"},
                       traceback=traceback, worker=worker, started_at=job.started_at)
    log_transition("failed", job_id=job_id, kind=kind.name, attempt=job.attempts, error=error[:200])
    metrics.job_finished(kind=kind.name, queue=job.queue, status=S.FAILED, run_seconds=_run_seconds(job, now))
    return FailureOutcome(retry_in=None, attempt=job.attempts)


def _run_seconds(job: Job, now: datetime) -> float | None:
    return (now - job.started_at).total_seconds() if job.started_at else None


def job_fail_stuck(*, job: Job, error: str) -> FailureOutcome | None:
    """A running job whose worker is gone: retry it if attempts remain, else fail it."""
    kind = get_kind(job.kind)
    if kind is None:
        return None
    return job_attempt_failed(job_id=str(job.id), token=None, kind=kind, params=job.params, error=error,
                              traceback="", worker=job.worker, retryable=True)


def _run_inline(job: Job, kind: JobKind) -> None:
    """Run a cheap kind in the request, through the same claim and finish as a worker."""
    from .tasks import execute_job

    execute_job(kind=kind, job_id=str(job.id), params=job.params, worker=f"inline@{worker_name()}")
    job.refresh_from_db()


# --- API tokens -----------------------------------------------------------------------


def api_token_create(*, user, name: str = "") -> tuple[ApiToken, str]:
    """Make a token for `user`; the plain token is returned once and never stored."""
    import hashlib
    import secrets

    plain = "jpt_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name[:100], key_hash=hashlib.sha256(plain.encode()).hexdigest(), prefix=plain[:12]
    )
    return token, plain


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
