"""User schedules: django-celery-beat rows whose every run submits one job. Create, run now, pause and resume them,
and catch up on the runs missed while no beat ran, by each schedule's policy."""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

from celery import schedules as celery_schedules
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from ..infra import counters
from ..models import Job
from ..registry import get_kind
from .audit import Action, audit_record
from .errors import JobInputError, JobStateError, NotPermitted, ScheduleNameTaken
from .submit import job_submit, validate_params

logger = logging.getLogger(__name__)

# The task a user schedule runs: it submits one job of the kind named in its kwargs. It names rows of
# django-celery-beat's PeriodicTask table that installations hold, so it keeps the name it was first given.
SCHEDULED_JOB_TASK = "jobs.periodic.submit_scheduled_job"

# What beat does with the runs a schedule missed while no beat ran (it was stopped, or lost Redis):
# "once" sends one run as soon as it starts (Celery's own behaviour: never one per missed run), "skip" sends
# none and waits for the next regular time.
CATCH_UP_ONCE = "once"
CATCH_UP_SKIP = "skip"
CATCH_UP_POLICIES = (CATCH_UP_ONCE, CATCH_UP_SKIP)
DEFAULT_CATCH_UP = CATCH_UP_ONCE

# Acting on a schedule that runs as someone else takes django-celery-beat's own permissions (as the admin does).
CREATE_OTHERS_PERMISSION = "django_celery_beat.add_periodictask"
MANAGE_OTHERS_PERMISSION = "django_celery_beat.change_periodictask"

MAX_EVERY_SECONDS = 366 * 24 * 3600
CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
CRONTAB_RANGES = {"minute": (60, 0), "hour": (24, 0), "day_of_month": (31, 1), "month_of_year": (12, 1),
                  "day_of_week": (7, 0)}  # (how many values, the first)
# Counting missed crontab runs one by one stops here ("at least this many").
MISSED_COUNT_CAP = 10_000


@dataclass(frozen=True)
class ScheduledJob:
    """What each run of a user schedule submits, from its PeriodicTask's kwargs."""

    kind: str
    params: dict
    owner: str | None  # the username the jobs run as; None: they have no owner
    catch_up: str


def scheduled_job(task: PeriodicTask) -> ScheduledJob | None:
    """The job a PeriodicTask submits; None for a task that is not a user schedule (or whose kwargs are broken)."""
    if task.task != SCHEDULED_JOB_TASK:
        return None
    try:
        kwargs = json.loads(task.kwargs or "{}")
    except ValueError:
        return None
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("kind"), str):
        return None
    params = kwargs.get("params")
    owner = kwargs.get("owner")
    catch_up = kwargs.get("catch_up")
    return ScheduledJob(kind=kwargs["kind"], params=params if isinstance(params, dict) else {},
                        owner=owner if isinstance(owner, str) and owner else None,
                        catch_up=catch_up if catch_up in CATCH_UP_POLICIES else DEFAULT_CATCH_UP)


def may_see_schedule(user, task: PeriodicTask, job: ScheduledJob | None = None) -> bool:
    """Staff see every schedule; anyone else the ones that run as them."""
    job = job or scheduled_job(task)
    return job is not None and (user.is_staff or job.owner == user.get_username())


def may_manage_schedule(user, task: PeriodicTask, job: ScheduledJob | None = None) -> bool:
    """Owners manage their own schedules; staff with django-celery-beat's change permission manage any."""
    job = job or scheduled_job(task)
    if job is None:
        return False
    if job.owner is not None and job.owner == user.get_username():
        return True
    return user.is_staff and user.has_perm(MANAGE_OTHERS_PERMISSION)


def _require_manage(user, task: PeriodicTask) -> ScheduledJob:
    job = scheduled_job(task)
    if job is None:
        raise JobStateError("this schedule submits no job kind; change it in the admin")
    if not may_manage_schedule(user, task, job):
        raise NotPermitted("only its owner, or staff with the permission to change schedules, may do this")
    return job


def _record(*, user, action: str, task: PeriodicTask, **detail) -> None:
    """The audit entry of an action on a schedule, in the transaction that performs it."""
    audit_record(actor=user, action=action, target=f"schedule:{task.name}", detail=detail)
    logger.info("%s schedule=%r id=%s by=%s", action, task.name, task.pk, user.get_username())


# --- When a schedule runs -------------------------------------------------------------


def _at(schedule, now: datetime):
    """A copy of a Celery schedule whose clock reads `now`, so that what it computes is reproducible."""
    fixed = copy.copy(schedule)
    fixed.nowfun = lambda: now
    return fixed


def next_fire_after(schedule, last_run_at: datetime, *, now: datetime) -> datetime:
    """When beat sends a schedule next, given when it last did: Celery's own arithmetic (so in the crontab's
    time zone, across daylight saving changes, as beat does it). In the past when it is due."""
    # In UTC: an aware datetime plus a timedelta is wall-clock arithmetic in its own zone, which lands an hour off
    # (or on a time that does not exist) across a daylight saving change.
    return now.astimezone(dt_timezone.utc) + _at(schedule, now).remaining_estimate(last_run_at)


def beat_last_run(task: PeriodicTask, sent_at: float | None) -> datetime | None:
    """The last run beat knows of: the database's last_run_at (beat writes it every sync_every seconds), or the
    send recorded in Redis when that is later, and later than the row's last change too: a pause clears
    last_run_at and a resume saves the row, so that a resumed schedule starts from its resume, not its old sends."""
    last = task.last_run_at
    if sent_at is not None:
        sent = datetime.fromtimestamp(sent_at, dt_timezone.utc)
        if sent > max(last or task.date_changed, task.date_changed):
            return sent
    return last


def schedule_base(task: PeriodicTask, last_run: datetime | None) -> datetime | None:
    """What beat counts the next run from: the last run, else when the schedule last changed (a new or resumed
    schedule), as django-celery-beat's ModelEntry does; None for one with a start time and no run yet."""
    if last_run is not None:
        return last_run
    return task.date_changed if task.start_time is None else None


def next_run_at(task: PeriodicTask, *, last_run: datetime | None, now: datetime) -> datetime | None:
    """When beat sends this schedule next; None when it is paused or will not run again."""
    if not task.enabled:
        return None
    if task.clocked_id:
        return task.clocked.clocked_time if not (task.one_off and task.total_run_count) else None
    if task.start_time is not None and task.start_time > now:
        return task.start_time if task.interval_id else task.due_start_time(dt_timezone.utc)
    base = schedule_base(task, last_run) or now
    try:
        return next_fire_after(task.schedule, base, now=now)
    except Exception:  # noqa: BLE001 - a hand-edited row Celery cannot read (the admin allows it)
        logger.warning("cannot compute the next run of schedule %r", task.name)
        return None


def missed_runs(task: PeriodicTask, base: datetime, *, now: datetime) -> tuple[int, datetime]:
    """How many times beat would have sent the schedule after `base` and up to `now`, and the last of them.

    Interval and crontab schedules only (a clocked one runs once, a solar one is left to Celery)."""
    base, now = base.astimezone(dt_timezone.utc), now.astimezone(dt_timezone.utc)
    if task.interval_id:
        period = timedelta(**{task.interval.period: task.interval.every}).total_seconds()
        if period <= 0:
            return 0, base
        count = int((now - base).total_seconds() // period)
        return max(0, count), base + timedelta(seconds=count * period)
    if task.crontab_id:
        schedule, count, last = task.schedule, 0, base
        while count < MISSED_COUNT_CAP:
            fire = next_fire_after(schedule, last, now=last)
            if fire > now:
                break
            count, last = count + 1, fire
        return count, last
    return 0, base


# --- Writes ---------------------------------------------------------------------------


def _crontab_fields(text: str, zone: str, errors: list[dict]) -> dict | None:
    parts = text.split()
    if len(parts) != 5:
        errors.append({"loc": ["crontab"], "msg": "must be five fields: minute hour day-of-month month day-of-week "
                       "(e.g. \"30 2 * * *\")", "type": "crontab"})
        return None
    fields = dict(zip(CRONTAB_FIELDS, parts))
    for name, value in fields.items():
        if len(value) > CrontabSchedule._meta.get_field(name).max_length:
            errors.append({"loc": ["crontab"], "msg": f"{name} is too long", "type": "crontab"})
            return None
    for name, value in fields.items():
        size, first = CRONTAB_RANGES[name]
        try:
            # Field by field, as cron does: a day that never occurs in the months given is a crontab that never
            # runs (Celery's crontab() refuses it; beat then leaves the schedule out).
            celery_schedules.crontab_parser(size, first).parse(value)
        except Exception as exc:  # noqa: BLE001 - Celery's parser raises ValueError and its own ParseException
            errors.append({"loc": ["crontab"], "msg": f"not a valid crontab: {name.replace('_', ' ')}: {exc}",
                           "type": "crontab"})
            return None
    try:
        ZoneInfo(zone)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for paths, ...
        errors.append({"loc": ["crontab_timezone"], "msg": f"unknown time zone {zone!r}", "type": "timezone"})
        return None
    return {**fields, "timezone": zone}


def _interval(every_seconds: int) -> IntervalSchedule:
    # django-celery-beat keeps no unique constraint here: reuse the first match.
    found = IntervalSchedule.objects.filter(every=every_seconds, period=IntervalSchedule.SECONDS).order_by("pk").first()
    return found or IntervalSchedule.objects.create(every=every_seconds, period=IntervalSchedule.SECONDS)


def _crontab(fields: dict) -> CrontabSchedule:
    found = CrontabSchedule.objects.filter(**fields).order_by("pk").first()
    return found or CrontabSchedule.objects.create(**fields)


@transaction.atomic
def schedule_create(*, user, name: str, kind: str, params: dict | None = None, every_seconds: int | None = None,
                    crontab: str | None = None, crontab_timezone: str = "UTC", run_as: str | None = None,
                    catch_up: str = DEFAULT_CATCH_UP, enabled: bool = True) -> PeriodicTask:
    """A schedule that submits one job of `kind` every `every_seconds`, or at each time of `crontab`, as `run_as`
    (the user by default). Beat takes it up without a restart.

    Raises NotPermitted (another user's name as run_as, without the permission), JobInputError naming each bad
    field, or ScheduleNameTaken; nothing is written then.
    """
    username = run_as if run_as is not None else user.get_username()
    if username != user.get_username() and not (user.is_staff and user.has_perm(CREATE_OTHERS_PERMISSION)):
        raise NotPermitted("only staff with the permission to add schedules may schedule jobs as another user")
    errors: list[dict] = []
    if not name:
        errors.append({"loc": ["name"], "msg": "must not be blank", "type": "blank"})
    elif len(name) > PeriodicTask._meta.get_field("name").max_length:
        errors.append({"loc": ["name"], "msg": "at most 200 characters", "type": "length"})
    job_kind = get_kind(kind)
    clean_params = {}
    if job_kind is None:
        errors.append({"loc": ["kind"], "msg": f"unknown job kind {kind!r}", "type": "unknown_kind"})
    else:
        try:
            clean_params = validate_params(job_kind, params or {})
        except JobInputError as exc:
            errors.extend(exc.errors)
    crontab_fields = None
    if (every_seconds is None) == (crontab is None):
        errors.append({"loc": ["every_seconds"], "msg": "give either every_seconds or crontab, not both",
                       "type": "schedule"})
    elif every_seconds is not None and not 1 <= every_seconds <= MAX_EVERY_SECONDS:
        errors.append({"loc": ["every_seconds"], "msg": f"must be 1 to {MAX_EVERY_SECONDS}", "type": "range"})
    elif crontab is not None:
        crontab_fields = _crontab_fields(crontab, crontab_timezone, errors)
    if catch_up not in CATCH_UP_POLICIES:
        errors.append({"loc": ["catch_up"], "msg": f"must be one of {list(CATCH_UP_POLICIES)}", "type": "enum"})
    owner = get_user_model().objects.filter(username=username, is_active=True).first()
    if owner is None:
        errors.append({"loc": ["run_as"], "msg": f"no active user named {username!r}", "type": "unknown_user"})
    if errors:
        raise JobInputError(errors)
    if PeriodicTask.objects.filter(name=name).exists():
        raise ScheduleNameTaken(f"a schedule named {name!r} exists already")
    task = PeriodicTask(
        name=name, task=SCHEDULED_JOB_TASK, enabled=enabled,
        kwargs=json.dumps({"kind": job_kind.name, "params": clean_params, "owner": owner.get_username(),
                           "catch_up": catch_up}),
        interval=_interval(every_seconds) if every_seconds is not None else None,
        crontab=_crontab(crontab_fields) if crontab_fields is not None else None,
        description=f"Submits a {job_kind.name} job each run, as {owner.get_username()}.",
    )
    try:
        with transaction.atomic():
            task.save()
    except IntegrityError:
        raise ScheduleNameTaken(f"a schedule named {name!r} exists already") from None
    _record(user=user, action=Action.SCHEDULE_CREATE, task=task, kind=job_kind.name, run_as=owner.get_username())
    return task


def schedule_run_now(*, user, task: PeriodicTask) -> Job:
    """Submit one run of the schedule at once, besides its regular ones (the job names the schedule).

    Raises NotPermitted, JobStateError (its kind or owner is gone, its parameters no longer fit the kind), or
    QueueFull / BrokerUnavailable as any submission does; nothing is written then.
    """
    job = _require_manage(user, task)
    owner = None
    if job.owner is not None:
        owner = get_user_model().objects.filter(username=job.owner, is_active=True).first()
        if owner is None:
            raise JobStateError(f"it runs as {job.owner!r}, who is not an active user")
    try:
        with transaction.atomic():
            outcome = job_submit(user=owner, kind=job.kind, params=job.params, schedule_name=task.name[:200])
            _record(user=user, action=Action.SCHEDULE_RUN, task=task, job=str(outcome.job.id))
    except JobInputError as exc:
        raise JobStateError(f"its job cannot be submitted: {exc}") from None
    return outcome.job


def _set_enabled(*, user, task: PeriodicTask, enabled: bool) -> PeriodicTask:
    _require_manage(user, task)
    with transaction.atomic():
        task = PeriodicTask.objects.select_for_update().get(pk=task.pk)
        if task.enabled != enabled:
            task.enabled = enabled
            # save(), not update(): it tells beat that the schedules changed (and a pause clears last_run_at, so
            # that a resumed schedule counts from its resume: the paused time holds no missed runs).
            task.save()
            _record(user=user, action=Action.SCHEDULE_RESUME if enabled else Action.SCHEDULE_PAUSE, task=task)
    return task


def schedule_pause(*, user, task: PeriodicTask) -> PeriodicTask:
    """Stop the schedule's runs until it is resumed (pausing a paused one changes nothing, and records nothing)."""
    return _set_enabled(user=user, task=task, enabled=False)


def schedule_resume(*, user, task: PeriodicTask) -> PeriodicTask:
    """Run the schedule again, from now: the next run is one period (or the next crontab time) after the resume."""
    return _set_enabled(user=user, task=task, enabled=True)


def schedule_dispatched(*, name: str, at: float) -> None:
    """Beat sent a schedule's message."""
    counters.record_schedule_sent(name, at)


@dataclass(frozen=True)
class MissedRuns:
    name: str
    missed: int
    since: datetime
    policy: str


def schedules_catch_up(*, now: datetime | None = None) -> list[MissedRuns]:
    """When a beat starts dispatching: bring each schedule's last run up to the last send Redis recorded, then
    find the user schedules that missed runs while no beat ran, count them, and apply each one's policy.

    "skip" moves the last run up to the last missed time, so that beat waits for the next regular one;
    "once" leaves it, and beat sends one run at once (Celery never sends one per missed run).
    """
    now = now or timezone.now()
    tasks = list(PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab"))
    sent = counters.schedules_sent([task.name for task in tasks])
    found = []
    for task in tasks:
        last = beat_last_run(task, sent.get(task.name))
        if last is not None and last != task.last_run_at:
            PeriodicTask.objects.filter(pk=task.pk, last_run_at=task.last_run_at).update(last_run_at=last)
        job = scheduled_job(task)
        base = schedule_base(task, last)
        if job is None or base is None:
            continue
        try:
            count, last_due = missed_runs(task, base, now=now)
        except Exception:  # noqa: BLE001 - a row Celery cannot read is left to beat's own error handling
            logger.warning("cannot count the missed runs of schedule %r", task.name)
            continue
        if not count:
            continue
        if job.catch_up == CATCH_UP_SKIP:
            PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=last_due if task.interval_id else now)
        logger.warning("schedule %r missed %s run(s) since %s while no beat ran; catch-up: %s", task.name,
                       f"{count}+" if count >= MISSED_COUNT_CAP else count, base.isoformat(), job.catch_up)
        counters.record_schedule_event(task.name, {
            "event": "missed", "at": now.timestamp(), "missed": count, "since": base.timestamp(),
            "until": last_due.timestamp(), "policy": job.catch_up,
        }, missed=count)
        found.append(MissedRuns(task.name, count, base, job.catch_up))
    return found
