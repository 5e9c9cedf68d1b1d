"""Celery's side of the platform: a task per job kind, the housekeeping tasks, and the worker's heartbeat. Each
loads by id and calls one service."""
from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timedelta, timezone as dt_timezone

from billiard.exceptions import WorkerLostError
from celery import Task, current_app, shared_task
from celery.signals import (before_task_publish, task_failure, task_postrun, task_prerun, task_received, task_retry,
                            task_revoked, task_success, worker_ready, worker_shutdown)
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from django.conf import settings
from django.db import close_old_connections, connection

from . import aggregation, services
from .infra import metrics
from .infra.metrics import PUBLISHED_AT_HEADER
from .registry import JobKind, all_kinds

logger = logging.getLogger(__name__)

# Housekeeping task names. They name rows of django-celery-beat's PeriodicTask table that existing
# installations hold, so they keep the module path they were first published under.
PUBLISH_DUE_TASK = "jobs.periodic.publish_due_jobs"
AGGREGATE_TASK = "jobs.periodic.aggregate_job_stats"
RECOVER_TASK = "jobs.periodic.recover_lost_jobs"
RETENTION_TASK = "jobs.periodic.apply_retention"
# The task a user schedule runs: it submits one job of the kind named in its kwargs.
SCHEDULED_JOB_TASK = services.SCHEDULED_JOB_TASK


@task_prerun.connect
@task_postrun.connect
def _recycle_db_connections(sender=None, **kwargs) -> None:
    """Per task what Django does per request: drop a connection that is broken or past CONN_MAX_AGE, keep the rest."""
    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


def _in_worker(what: str, record) -> None:
    """Record what Celery did to a run, from the worker's main process: a failure is logged, never raised
    into Celery (the job's lease then lapses and it is taken back)."""
    try:
        record()
    except Exception:  # noqa: BLE001 - the database may be down; the lease covers it
        logger.exception("could not record %s", what)


class JobRequest(Request):
    """Records on the Job, at once, whatever ends a run outside its own code: its hard limit, its process lost,
    a revoke, a cancel on a lost broker connection or a cold shutdown."""

    def on_timeout(self, soft, timeout):
        super().on_timeout(soft, timeout)
        if not soft:
            _in_worker("a hard time limit", lambda: services.job_run_failed(
                job_id=self.id, token=None, worker=self.hostname, retryable=False,
                error=f"timed out after {timeout}s (hard time limit); its process was killed"))

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        # The pool hands over the error wrapped with its traceback.
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, WorkerLostError):
            # Retried at once with attempts left (a job that kills its process every time uses them up).
            _in_worker("a lost process", lambda: services.job_run_lost(
                job_id=self.id, worker=self.hostname, error=f"worker process lost: {exc}"))
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def cancel(self, pool, signal=None, emit_retry=True):
        """Celery stops the run: its broker connection was lost, or a cold shutdown. The run is handed back."""
        running = bool(self.time_start)
        super().cancel(pool, signal=signal, emit_retry=emit_retry)
        if running:
            _in_worker("a cancelled run", lambda: services.job_run_lost(
                job_id=self.id, worker=self.hostname, handed_back=True,
                error="interrupted: its worker stopped it (broker connection lost, or shutdown)"))

    def terminate(self, pool, signal=None):
        """A revoke with terminate (Flower, `celery control revoke`); the platform's own cancel has already
        recorded the job as cancelled, and this then finds no run to end."""
        running = bool(self.time_start)
        super().terminate(pool, signal=signal)
        if running:
            _in_worker("a revoked run", lambda: services.job_run_failed(
                job_id=self.id, token=None, worker=self.hostname, retryable=False,
                error="revoked: its run was terminated"))


class JobsConsumer(Consumer):
    """Celery's consumer, living through a lost Redis connection while it holds unacknowledged messages.

    With celery/kombu 5.7 on Redis, two paths end in AttributeError ('NoneType' object has no
    attribute 'hostname' / 'client', in kombu's redis `_connparams`), raised in the event loop, and
    the worker exits ("Unrecoverable error"): Celery lets the broken connection's transport go,
    then closes its channel, whose close restores the prefetched messages through that transport;
    and a run that ends after the reconnection acknowledges its message through the old channel.
    Here the old channel does not restore at close, and such an acknowledgement is logged and
    dropped. Those messages stay in Redis's unacknowledged set until the visibility timeout (or
    were lost with Redis); their jobs are published again before that (recovery: no live worker
    holds them; publish-due: runs handed back), and a second copy is dropped at claim. Shown by
    tests/faults/test_leases.py, which restarts Redis under a prefetching worker.
    """

    def on_connection_error_after_connected(self, exc):
        qos = getattr(getattr(self.task_consumer, "channel", None), "qos", None)
        if qos is not None and hasattr(qos, "restore_at_shutdown"):
            qos.restore_at_shutdown = False
        super().on_connection_error_after_connected(exc)

    def call_soon_ack(self, p, *args, **kwargs):
        return super().call_soon_ack(_ack_or_log, p, *args, **kwargs)


def _ack_or_log(settle, *args, **kwargs) -> None:
    try:
        settle(*args, **kwargs)
    except AttributeError:
        logger.warning("could not acknowledge a message: its broker connection is gone")


class JobTask(Task):
    """Base class of every kind's task."""

    Request = JobRequest
    # The Job row and its TaskResult, written by the services, hold the outcome; Celery writing it
    # again would cost a second write per job and could record a second result for a duplicate.
    ignore_result = True
    track_started = False
    acks_late = True
    reject_on_worker_lost = True


def _waited(request) -> float | None:
    """How long a first delivery waited in its queue (retries, sent with a countdown, did not queue)."""
    published_at = (getattr(request, "headers", None) or {}).get(PUBLISHED_AT_HEADER)
    if getattr(request, "retries", 0) or not isinstance(published_at, (int, float)):
        return None
    return max(0.0, time.time() - published_at)


def make_kind_task(kind: JobKind):
    """The Celery task that runs `kind`: named after it, on its queue, with its limits."""

    def run(self, job_id: str, params: dict):
        outcome = services.execute_job(kind=kind, job_id=job_id, params=params, worker=self.request.hostname or "",
                                       wait_seconds=_waited(self.request))
        if outcome.status == "retrying":
            raise self.retry(countdown=outcome.retry_in, exc=outcome.error, max_retries=None)
        if outcome.status == "failed":
            raise outcome.error
        return outcome.status

    run.__name__ = kind.name.replace(".", "_")  # a Django task's kind is a module path
    run.__doc__ = kind.description
    options = dict(name=kind.task_name, bind=True, base=JobTask, queue=kind.queue)
    for option in ("soft_time_limit", "time_limit", "rate_limit"):
        if getattr(kind, option) is not None:
            options[option] = getattr(kind, option)
    return shared_task(**options)(run)


def register_kind_tasks() -> None:
    """Make a task of every registered kind that has none yet (the app calls it when ready)."""
    for kind in all_kinds():
        if kind.task_name not in current_app.tasks:
            make_kind_task(kind)


@shared_task(name=PUBLISH_DUE_TASK, ignore_result=True)
def publish_due_jobs() -> int:
    """Publish jobs whose run_at has come (scheduled runs live in the database, not as ETA messages)."""
    metrics.housekeeping_ran("publish_due")
    return services.jobs_publish_due()


@shared_task(name=SCHEDULED_JOB_TASK, bind=True, ignore_result=True)
def submit_scheduled_job(self, kind: str, params: dict | None = None, owner: str | None = None,
                         catch_up: str | None = None) -> str:
    # `catch_up` is the schedule's policy for runs missed while no beat ran: beat's to apply, not a run's.
    # django-celery-beat names the schedule in a header of every message it sends; a worker puts
    # message headers on the request, an eager apply() keeps them under `headers`.
    schedule_name = (getattr(self.request, "periodic_task_name", None)
                     or (self.request.headers or {}).get("periodic_task_name") or "")
    return services.job_submit_scheduled(schedule_name=schedule_name, kind=kind, params=params, owner=owner,
                                         run_id=self.request.id)


@shared_task(name=AGGREGATE_TASK, ignore_result=True)
def aggregate_job_stats() -> int:
    metrics.housekeeping_ran("aggregate")
    return aggregation.aggregate_jobs().jobs


@shared_task(name=RECOVER_TASK, ignore_result=True)
def recover_lost_jobs() -> dict[str, int]:
    metrics.housekeeping_ran("recover")
    return services.recover_jobs()


@shared_task(name=RETENTION_TASK, ignore_result=True)
def apply_retention() -> int:
    metrics.housekeeping_ran("retention")
    return services.delete_expired()


# --- A project's own Celery tasks, tracked (JOBS_TRACK_CELERY_TASKS) -------------------------


def _track(what: str, record) -> None:
    """Record a tracked task's step; a failure to record is logged and never touches the task itself."""
    try:
        record()
    except Exception:  # noqa: BLE001 - the ledger is a record here, not the task's engine
        logger.exception("could not record %s of a tracked task", what)


@before_task_publish.connect
def _tracked_published(sender=None, body=None, headers=None, routing_key=None, **kwargs) -> None:
    if not services.is_tracked(sender):
        return
    headers = headers or {}
    args, task_kwargs = (body[0], body[1]) if isinstance(body, (list, tuple)) and len(body) >= 2 else ((), {})
    eta = headers.get("eta")
    _track("the publish", lambda: services.tracked_task_published(
        task_id=headers.get("id"), name=sender, args=args, kwargs=task_kwargs, queue=routing_key,
        eta=datetime.fromisoformat(eta) if isinstance(eta, str) else None, retries=headers.get("retries") or 0))


@task_received.connect
def _tracked_cancelled_before_start(sender=None, request=None, **kwargs) -> None:
    """A tracked task cancelled in the ledger is skipped, also by a worker that missed the revoke's broadcast
    (started later, or reconnected): Celery discards a revoked id before it runs."""
    if request is not None and services.is_tracked(request.name):
        try:
            cancelled = services.tracked_task_cancelled(task_id=request.id)
        except Exception:  # noqa: BLE001 - without the database, Celery's own revokes still apply
            logger.exception("could not read whether tracked task %s was cancelled", request.id)
            return
        if cancelled:
            worker_state.revoked.add(request.id)


@task_prerun.connect
def _tracked_started(sender=None, task_id=None, args=None, kwargs=None, **extra) -> None:
    if not services.is_tracked(getattr(sender, "name", None)):
        return
    request = sender.request
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    _track("the start", lambda: services.tracked_task_started(
        task_id=task_id, name=sender.name, args=args, kwargs=kwargs, queue=queue,
        worker=request.hostname or "", retries=request.retries or 0))


@task_success.connect
def _tracked_succeeded(sender=None, **kwargs) -> None:
    if services.is_tracked(getattr(sender, "name", None)):
        _track("the success", lambda: services.tracked_task_succeeded(task_id=sender.request.id))


@task_failure.connect
def _tracked_failed(sender=None, task_id=None, exception=None, einfo=None, **kwargs) -> None:
    if services.is_tracked(getattr(sender, "name", None)):
        _track("the failure", lambda: services.tracked_task_failed(
            task_id=task_id, error=f"{type(exception).__name__}: {exception}", traceback=str(einfo or ""),
            exception_class=f"{type(exception).__module__}.{type(exception).__qualname__}"))


@task_retry.connect
def _tracked_retried(sender=None, request=None, reason=None, einfo=None, **kwargs) -> None:
    if not services.is_tracked(getattr(sender, "name", None)):
        return
    when = getattr(reason, "when", None)
    retry_at = when if isinstance(when, datetime) else datetime.now(dt_timezone.utc) + timedelta(
        seconds=float(when or 0))
    cause = getattr(reason, "exc", None) or reason
    _track("the retry", lambda: services.tracked_task_failed(
        task_id=request.id, error=f"{type(cause).__name__}: {cause}", traceback=str(einfo or ""),
        exception_class=f"{type(cause).__module__}.{type(cause).__qualname__}", retry_at=retry_at))


@task_revoked.connect
def _tracked_revoked(sender=None, request=None, **kwargs) -> None:
    if services.is_tracked(getattr(sender, "name", None)):
        _track("the revoke", lambda: services.tracked_task_revoked(task_id=request.id))


# --- The worker's heartbeat ------------------------------------------------------------


class Heartbeat:
    """Every JOBS_HEARTBEAT_SECONDS, from the worker's main process: renew the leases of the jobs it runs, say what
    it holds, take back the jobs of workers that stopped beating, publish what waits for a message, and settle
    which of its queues it consumes with the paused ones (a pause or resume broadcast it missed).

    A thread of its own, not the event loop's timer: a solo or threads pool runs jobs in the main
    process, where a long run would hold the timer (and the leases) back, and a slow database must
    not stall the loop that takes messages. It beats for the whole process, so the leases of the
    jobs a warm shutdown lets finish are kept until they are done.
    """

    def __init__(self, consumer):
        self.name = consumer.hostname
        self.pid = os.getpid()
        self.app = consumer.app
        self.concurrency = getattr(consumer.controller, "concurrency", 0) or 0
        # The queues it was started with (--queues), paused ones included: what it consumes again on resume.
        self.serves = sorted(self.app.amqp.queues.consume_from)
        # Since when every beat has reached the database. Other workers' jobs are taken back only once
        # that is a whole lease: after a database outage every lease has lapsed, and their live
        # workers must get the time to renew them first.
        self._steady_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobs-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def leave_paused_queues(self, consumer) -> None:
        """At start, in the event loop's thread and before it takes a message: stop consuming the paused queues."""
        try:
            leave = services.worker_queues_to_leave(serves=self.serves)
        except Exception:  # noqa: BLE001 - the database may be down: the first good beat settles it, and the
            # claim refuses a paused queue's jobs meanwhile
            logger.exception("could not read the paused queues worker=%s", self.name)
            return
        for queue in leave:
            logger.info("queue %s is paused: not consuming it until it is resumed", queue)
            consumer.cancel_task_queue(queue)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=settings.JOBS_HEARTBEAT_SECONDS + 5)
        _in_worker("the worker's stop", lambda: services.worker_stopped(name=self.name, pid=self.pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            close_old_connections()
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the database may be down: beat again later, leases lapse meanwhile
                self._steady_since = None
                logger.exception("heartbeat failed worker=%s", self.name)
            self._stop.wait(settings.JOBS_HEARTBEAT_SECONDS)
        connection.close()

    def beat(self) -> None:
        now = time.monotonic()
        if self._steady_since is None:
            self._steady_since = now
        running, held = self._requests()
        # Read before the paused queues are (in the service): a resume between the two reads then sends an
        # add_consumer again, which is harmless, rather than a cancel that would stop the resumed queue for a beat.
        consuming = self._consuming()
        services.worker_beat(name=self.name, pid=self.pid, queues=self.serves,
                             concurrency=self.concurrency, running_ids=running, held_ids=held,
                             reclaim=now - self._steady_since >= settings.JOBS_LEASE_SECONDS)
        if consuming is not None:
            services.worker_consumers_reconcile(worker=self.name, serves=self.serves, consuming=consuming)

    def _consuming(self) -> list[str] | None:
        """The queues the consumer takes messages from now (the event loop changes them as we read)."""
        for _ in range(5):
            try:
                return list(self.app.amqp.queues.consume_from)
            except RuntimeError:
                continue
        return None

    @staticmethod
    def _requests() -> tuple[list[str], list[str]]:
        """Ids of the job messages this worker runs, and of all it holds (running, reserved, waiting a countdown)."""
        for _ in range(5):
            try:  # the event loop changes these sets as we read them
                active = [r.id for r in tuple(worker_state.active_requests) if isinstance(r.task, JobTask)]
                waiting = [r.id for r in (*tuple(worker_state.reserved_requests),
                                          *tuple(worker_state.scheduled_requests)) if isinstance(r.task, JobTask)]
                return active, sorted(set(active) | set(waiting))
            except RuntimeError:
                continue
        return [], []


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def _start_heartbeat(sender=None, **kwargs) -> None:
    global _heartbeat
    if _heartbeat is None:  # worker_ready comes again after each reconnection to the broker
        _heartbeat = Heartbeat(sender)
        _heartbeat.leave_paused_queues(sender)
        _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(sender=None, **kwargs) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
