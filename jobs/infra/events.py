"""Job events: one log line and its metric together, once the transaction that made the change commits."""
from __future__ import annotations

import functools
import json
import logging

from django.db import transaction

from . import metrics

logger = logging.getLogger("jobs.events")


def emit(event: str, *, job_id, kind: str, queue: str = "", attempt: int | None = None,
         run_seconds: float | None = None, wait_seconds: float | None = None, **fields) -> None:
    """Log a job's state change and count it, after commit (at once outside a transaction).

    A change rolled back is neither logged nor counted. `run_seconds` and `wait_seconds` feed
    the histograms; `fields` go to the log line only.
    """
    transaction.on_commit(functools.partial(
        _emit_now, event, job_id=job_id, kind=kind, queue=queue, attempt=attempt, run_seconds=run_seconds,
        wait_seconds=wait_seconds, fields=fields))


def _emit_now(event: str, *, job_id, kind: str, queue: str, attempt: int | None, run_seconds: float | None,
              wait_seconds: float | None, fields: dict) -> None:
    data = {"event": event, "job": str(job_id), "kind": kind}
    if attempt is not None:
        data["attempt"] = attempt
    data.update(fields)
    logger.info(" ".join(f"{k}={_kv(v)}" for k, v in data.items()), extra={"fields": data})
    metrics.observe(event, kind=kind, queue=queue, run_seconds=run_seconds, wait_seconds=wait_seconds)


def _kv(value) -> str:
    text = str(value)
    # Quote what would otherwise split the line into wrong pairs.
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line; job events carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class QuietTicks(logging.Filter):
    """Drops the INFO lines Celery and beat write for each run of the frequent housekeeping tasks named in `tasks`
    (publish-due runs every 2 s): their runs are counted instead (jobs_housekeeping_runs_total)."""

    def __init__(self, tasks=()):
        super().__init__()
        self.tasks = tuple(tasks)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not self.tasks:
            return True
        message = record.getMessage()
        return not any(task in message for task in self.tasks)
