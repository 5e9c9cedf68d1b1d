"""Structured logs: one line per job state change, as key=value or JSON."""
import json
import logging

logger = logging.getLogger("jobs.events")


def log_transition(event: str, *, job_id, kind: str = "", attempt: int | None = None, **fields) -> None:
    """Log a job's state change with the fields a log system indexes on."""
    data = {"event": event, "job": str(job_id), "kind": kind}
    if attempt is not None:
        data["attempt"] = attempt
    data.update(fields)
    logger.info(" ".join(f"{k}={_kv(v)}" for k, v in data.items()), extra={"fields": data})


def _kv(value) -> str:
    text = str(value)
    # Quote what would otherwise split the line into wrong pairs.
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line; job events carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)
