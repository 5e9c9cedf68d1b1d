"""Operators' actions: pausing and resuming queues, retrying or cancelling many jobs by filter. Each checks its
permission and is recorded in the audit log in the transaction that performs it."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import F, Q, QuerySet, TextField
from django.db.models.functions import Cast

from ..infra import control
from ..models import AuditEntry, Job, QueuePause, Worker
from .audit import Action, audit_record, require_permission
from .errors import JobInputError, JobStateError, NotFound
from .submit import CANCELLABLE, RETRYABLE, jobs_cancel_locked, jobs_publish_due, jobs_retry_locked

logger = logging.getLogger(__name__)

PAUSE_PERMISSION = "jobs.pause_queue"
BULK_PERMISSIONS = {"retry": "jobs.bulk_retry", "cancel": "jobs.bulk_cancel"}
BULK_STATES = {"retry": RETRYABLE, "cancel": CANCELLABLE}
BULK_AUDIT_ACTIONS = {"retry": Action.BULK_RETRY, "cancel": Action.BULK_CANCEL}
# Jobs changed per transaction: short write locks (SQLite holds one from BEGIN), a bounded on-commit publish.
BULK_BATCH_SIZE = 500
# The suggested groups of operators (README, "Operations"); migration 0006 creates them as they were then.
OPERATOR_GROUPS = {
    "Operators (read-only)": ["view_audit"],
    "Retriers": ["view_audit", "bulk_retry"],
    "Pausers": ["view_audit", "pause_queue"],
    "Operators": ["view_audit", "bulk_retry", "bulk_cancel", "pause_queue"],
}


@transaction.atomic
def operator_groups_ensure() -> list[str]:
    """Create the suggested operator groups that are missing and give each its permissions (any other permission
    an administrator gave a group is kept). Returns the groups' names."""
    for name, codenames in OPERATOR_GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="jobs", codename__in=codenames))
    return list(OPERATOR_GROUPS)


# --- Pausing queues ------------------------------------------------------------------------


def paused_queue_names() -> set[str]:
    return set(QueuePause.objects.values_list("queue", flat=True))


def _pausable(queue: str) -> None:
    if queue == settings.JOBS_PLATFORM_QUEUE:
        raise JobStateError("the platform queue runs the housekeeping (publish-due, recovery, statistics, "
                            "retention, schedules) and cannot be paused")
    if queue not in settings.JOBS_QUEUES:
        raise NotFound(f"no queue named {queue!r}")


@transaction.atomic
def queue_pause(*, queue: str, actor) -> QueuePause:
    """Pause `queue`: workers take none of its jobs until it is resumed (running ones finish); submissions are still
    accepted up to its limit. Pausing a paused queue changes nothing (and records nothing).

    Raises NotPermitted (without jobs.pause_queue), NotFound (no such queue), JobStateError (the platform queue).
    """
    require_permission(actor, PAUSE_PERMISSION, "pause queues")
    _pausable(queue)
    pause, created = QueuePause.objects.get_or_create(queue=queue, defaults={"paused_by": actor})
    if created:
        audit_record(actor=actor, action=Action.QUEUE_PAUSE, target=f"queue:{queue}")
        # To every worker, not only those the registry says serve it: one that started a moment ago has not
        # beaten yet, and one that does not consume the queue ignores the command.
        transaction.on_commit(lambda: control.cancel_consumer(queue))
        logger.info("queue paused queue=%s by=%s", queue, actor.get_username() if actor else "-")
    return pause


@transaction.atomic
def queue_resume(*, queue: str, actor) -> bool:
    """Resume a paused queue: the workers that serve it take its jobs again at once. False when it was not paused.

    Raises as queue_pause does.
    """
    require_permission(actor, PAUSE_PERMISSION, "resume queues")
    _pausable(queue)
    deleted, _ = QueuePause.objects.filter(queue=queue).delete()
    if deleted:
        audit_record(actor=actor, action=Action.QUEUE_RESUME, target=f"queue:{queue}")
        transaction.on_commit(lambda: _consume_again(queue))
        logger.info("queue resumed queue=%s by=%s", queue, actor.get_username() if actor else "-")
    return bool(deleted)


def _consume_again(queue: str) -> None:
    # Only the workers started with the queue: another one would start consuming a queue it was not given.
    serving = [worker.name for worker in Worker.objects.alive(within=settings.JOBS_LEASE_SECONDS)
               if queue in (worker.queues or [])]
    control.add_consumer(queue, destination=serving)
    # Jobs held back while it was paused (handed back at claim, or due meanwhile) are sent now, not at the next beat.
    jobs_publish_due()


def worker_queues_to_leave(*, serves: list[str]) -> list[str]:
    """The queues a starting worker must not consume: those of `serves` that are paused. None where the workers
    take no remote control (SQS): there a worker could not be told to take the queue again on resume, and the
    claim refuses a paused queue's jobs instead."""
    if not control.supported():
        return []
    return sorted(paused_queue_names() & set(serves))


def worker_consumers_reconcile(*, worker: str, serves: list[str], consuming: list[str]) -> dict[str, list[str]]:
    """Bring a worker's consumers in line with the paused queues, at each of its heartbeats: a broadcast it missed
    (it was reconnecting, or started as the pause was made) is made up for within a beat.

    `serves`: the queues it was started with; `consuming`: those it consumes now. The commands go to the worker
    itself through the broker, so that its event loop, which owns the consumer, carries them out (nothing where
    the workers take no remote control: SQS).
    """
    if not control.supported():
        return {"cancelled": [], "added": []}
    paused = paused_queue_names()
    cancel = sorted(set(consuming) & paused)
    add = sorted(set(serves) - paused - set(consuming))
    for queue in cancel:
        control.cancel_consumer(queue, destination=[worker])
    for queue in add:
        control.add_consumer(queue, destination=[worker])
    if cancel or add:
        logger.info("worker consumers reconciled worker=%s cancelled=%s added=%s", worker, cancel, add)
    return {"cancelled": cancel, "added": add}


# --- Bulk actions ------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a bulk action takes: every condition given, together (None: any)."""

    status: str | None = None
    kind: str | None = None
    queue: str | None = None
    owner: str | None = None  # a username
    created_after: datetime | None = None  # created at or after
    created_before: datetime | None = None  # created before
    search: str | None = None  # in the parameters (as JSON text) or the error, ignoring case

    def as_json(self) -> dict:
        return {name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in asdict(self).items() if value not in (None, "")}


@dataclass(frozen=True)
class BulkResult:
    action: str
    dry_run: bool
    matched: int  # jobs that matched the filter and were in a state the action applies to
    changed: int | None  # jobs changed; None for a dry run


def _check_action(action: str) -> None:
    if action not in BULK_PERMISSIONS:
        raise JobInputError([{"loc": ["action"], "msg": "must be retry or cancel", "type": "enum"}])


def jobs_matching(*, user, action: str, filter: JobFilter) -> QuerySet[Job]:
    """The jobs a bulk `action` would take: matching `filter`, in a state the action applies to, and the user's own
    (staff: anyone's). Tracked Celery tasks are acted on one by one, from their page.

    Raises NotFound when the filter names an owner the user may not act for: for anyone but staff, another user's
    jobs do not exist, and are answered exactly as a user that does not exist.
    """
    _check_action(action)
    if filter.status and filter.status not in Job.Status.values:
        raise JobInputError([{"loc": ["filter", "status"], "msg": f"must be one of {Job.Status.values}",
                              "type": "enum"}])
    jobs = Job.objects.filter(tracked=False, status__in=BULK_STATES[action])
    if user is not None and not user.is_staff:
        jobs = jobs.filter(owner=user)
    if filter.owner:
        owner = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: filter.owner}).first()
        if owner is None or (user is not None and not user.is_staff and owner.pk != user.pk):
            raise NotFound(f"no owner {filter.owner!r} among the jobs you may act on")
        jobs = jobs.filter(owner=owner)
    if filter.status:
        jobs = jobs.filter(status=filter.status)
    if filter.kind:
        jobs = jobs.filter(kind=filter.kind)
    if filter.queue:
        jobs = jobs.filter(queue=filter.queue)
    if filter.created_after:
        jobs = jobs.filter(created_at__gte=filter.created_after)
    if filter.created_before:
        jobs = jobs.filter(created_at__lt=filter.created_before)
    if filter.search:
        # The parameters as the database keeps their JSON text, where a quote or a non-ASCII letter may be
        # escaped (SQLite keeps \u00eb for ë): the text is looked for as typed and as JSON spells it, and, since
        # SQLite ignores the case of ASCII letters only, in lower and upper case besides.
        spellings = {spelling for text in (filter.search, filter.search.lower(), filter.search.upper())
                     for spelling in (text, json.dumps(text)[1:-1])}
        found = Q()
        for text in spellings:
            found |= Q(params_text__icontains=text) | Q(error__icontains=text)
        jobs = jobs.alias(params_text=Cast("params", TextField())).filter(found)
    return jobs


def jobs_bulk(*, actor, action: str, filter: JobFilter, dry_run: bool = True, max_matched: int | None = None,
              batch_size: int = BULK_BATCH_SIZE) -> BulkResult:
    """Retry or cancel every job matching `filter` (see jobs_matching), as job_retry and job_cancel do one.

    A dry run counts them and changes nothing; so does a run that finds more than `max_matched` (the count a user
    confirmed), which answers as a dry run with the new count. Otherwise the jobs are changed in batches of `batch_size`, each in a
    transaction that reads the batch again with its rows locked: a job that left the matching state meanwhile
    (finished, retried, cancelled by someone else) is left alone, so repeating the action is safe. The audit
    entry is written first and its count raised in each batch's transaction, so that it always says what was done.

    Raises NotPermitted (without jobs.bulk_retry / jobs.bulk_cancel), NotFound (an owner the user may not act
    for), JobInputError (an unknown action or status).
    """
    _check_action(action)
    require_permission(actor, BULK_PERMISSIONS[action], f"{action} jobs in bulk")
    matching = jobs_matching(user=actor, action=action, filter=filter)
    matched = matching.count()
    if dry_run or (max_matched is not None and matched > max_matched):
        return BulkResult(action=action, dry_run=True, matched=matched, changed=None)
    with transaction.atomic():
        entry = audit_record(actor=actor, action=BULK_AUDIT_ACTIONS[action], filter=filter.as_json(), count=0,
                             detail={"matched": matched})
    apply = jobs_retry_locked if action == "retry" else jobs_cancel_locked
    changed, after = 0, None
    while True:
        with transaction.atomic():
            batch = matching.order_by("pk")
            if after is not None:
                batch = batch.filter(pk__gt=after)
            jobs = list(batch.select_for_update()[:batch_size])
            if not jobs:
                break
            after = jobs[-1].pk
            done = len(apply(jobs=jobs))
            if done:
                AuditEntry.objects.filter(pk=entry.pk).update(count=F("count") + done)
            changed += done
    logger.info("bulk %s matched=%s changed=%s by=%s filter=%s", action, matched, changed,
                actor.get_username() if actor else "-", json.dumps(filter.as_json()))
    return BulkResult(action=action, dry_run=False, matched=matched, changed=changed)
