"""The platform's own periodic schedules (django-celery-beat rows), installed by `make run`."""
from __future__ import annotations

from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from .tasks import AGGREGATE_TASK, PUBLISH_DUE_TASK, RECOVER_TASK, RETENTION_TASK

# Periodic tasks jump the queue (Redis serves priority 0 first).
PERIODIC_OPTIONS = {"priority": 0}

# name -> (task, every N seconds or a crontab dict, why this period)
PLATFORM_SCHEDULES = {
    "Publish due scheduled jobs": (
        PUBLISH_DUE_TASK, {"every": 2},
        "run_at is honoured within about two seconds; each run is one indexed query when nothing is due",
    ),
    "Aggregate job statistics": (
        AGGREGATE_TASK, {"every": 30},
        "the stats are per minute and settle 30 seconds behind the clock anyway; a run with nothing new "
        "is two indexed reads",
    ),
    "Recover lost jobs": (
        RECOVER_TASK, {"every": 30},
        "a lost message is found within a minute of going stale, at the cost of one broker scan per run",
    ),
    "Apply retention": (
        RETENTION_TASK, {"crontab": {"minute": "17", "hour": "3"}},
        "once a day, at a quiet hour: retention is measured in days",
    ),
    "Celery backend cleanup": (
        "celery.backend_cleanup", {"crontab": {"minute": "27", "hour": "3"}},
        "Celery's own expired-result cleanup, daily as Celery intends",
    ),
}


def install_schedules() -> list[tuple[str, bool]]:
    """Create the platform's periodic tasks that do not exist yet; run by `make run`, safe to run again."""
    installed = []
    for name, (task, when, why) in PLATFORM_SCHEDULES.items():
        defaults = {"task": task, "description": f"Platform schedule. Period: {why}.", **PERIODIC_OPTIONS}
        if "every" in when:
            interval, _ = IntervalSchedule.objects.get_or_create(every=when["every"], period=IntervalSchedule.SECONDS)
            # Expire rather than pile up while no worker is there to run them.
            defaults.update(interval=interval, crontab=None, expire_seconds=max(10, when["every"] * 5))
        else:
            crontab, _ = CrontabSchedule.objects.get_or_create(
                **when["crontab"], day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC")
            defaults.update(crontab=crontab, interval=None)
        # Created once: what staff later change in the admin (period, enabled) is theirs to keep.
        _, created = PeriodicTask.objects.get_or_create(name=name, defaults=defaults)
        installed.append((name, created))
    return installed
