"""Prometheus metrics: what each process records, and the host's sums (GET /metrics adds the queues).

Every process of a host (gunicorn workers, Celery pool processes, anything that submits) writes
its counters and histograms to files in PROMETHEUS_MULTIPROC_DIR, prometheus-client's
multiprocess mode; a scrape adds up the files of the whole host.

The directory is one per host (or container). When a web server or a worker starts, the files of
processes that have exited are folded into one file per metric type: the directory stays small,
and a host's counters never go down, so Prometheus sees no false reset when one process exits.
A host that runs workers but no web server serves the same sums on JOBS_METRICS_PORT.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import time

from django.conf import settings


def metrics_dir() -> str:
    """Where this process writes (prometheus-client reads the environment when a value is first used)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.PROMETHEUS_MULTIPROC_DIR


# First: the settings put PROMETHEUS_MULTIPROC_DIR in the environment, which prometheus-client
# must see when it is imported to choose its multiprocess mode.
os.makedirs(metrics_dir(), exist_ok=True)  # each process's files are created in it on first use

from celery.signals import worker_init, worker_ready  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.mmap_dict import MmapedDict  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

logger = logging.getLogger(__name__)

# From a few milliseconds (no-op jobs on an idle queue) to an hour (the longest time limit).
TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

SUBMITTED = Counter("jobs_submitted", "Jobs recorded by a submission (API, form, schedule, client).",
                    ["kind", "queue"])
REFUSED = Counter("jobs_refused", "Submissions refused by back pressure, by reason.", ["reason"])
REFUSAL_REASONS = ("queue_full", "broker_down")
FINISHED = Counter("jobs_finished", "Jobs that reached a final status.", ["kind", "queue", "status"])
RETRIED = Counter("jobs_retried", "Failed runs that were scheduled to run again.", ["kind", "queue"])
WAIT_SECONDS = Histogram("jobs_wait_seconds", "Time a job's message waited in its queue before a worker took it "
                         "(first delivery of each publish).", ["kind", "queue"], buckets=TIME_BUCKETS)
HOUSEKEEPING_RUNS = Counter("jobs_housekeeping_runs", "Housekeeping task runs (publish-due, recovery, statistics, "
                            "retention), counted rather than logged one by one.", ["task"])
RUN_SECONDS = Histogram("jobs_run_seconds", "Time from a run's claim to its end, by how it ended.",
                        ["kind", "queue", "outcome"], buckets=TIME_BUCKETS)

# --- Recording (events.emit records job events; the admission service counts refusals) -----

PUBLISHED_AT_HEADER = "jobs_published_at"


def publish_headers() -> dict:
    """Message headers for a job's publish: when it was sent, for the wait-time histogram."""
    return {PUBLISHED_AT_HEADER: time.time()}


def observe(event: str, *, kind: str, queue: str, run_seconds: float | None = None,
            wait_seconds: float | None = None) -> None:
    """Count one job event: `submitted`, `running`, `retrying`, `stopped` (a cancelled run) or a final status."""
    if event == "submitted":
        SUBMITTED.labels(kind, queue).inc()
    elif event in ("succeeded", "failed", "cancelled"):
        FINISHED.labels(kind, queue, event).inc()
    elif event == "retrying":
        RETRIED.labels(kind, queue).inc()
    if run_seconds is not None and event in ("succeeded", "failed", "cancelled", "retrying", "stopped"):
        RUN_SECONDS.labels(kind, queue, "cancelled" if event == "stopped" else event).observe(max(0.0, run_seconds))
    if wait_seconds is not None:
        WAIT_SECONDS.labels(kind, queue).observe(max(0.0, wait_seconds))


def housekeeping_ran(task: str) -> None:
    HOUSEKEEPING_RUNS.labels(task).inc()


def refused(reason: str) -> None:
    REFUSED.labels(reason).inc()


def declare_refusals() -> None:
    """Give every refusal reason its series at 0, so that a scrape shows jobs_refused_total before the first."""
    for reason in REFUSAL_REASONS:
        REFUSED.labels(reason)


# --- The directory: folding exited processes, reading the sums --------------------------

# Types whose values add up across processes; gauges (none of ours) are not folded.
_SUMMED_TYPES = ("counter", "histogram", "summary")


@contextlib.contextmanager
def _locked(path: str, *, exclusive: bool):
    """Scrapes read while no fold is half done: a fold writes the sum before it removes the files."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fold_exited_processes(path: str | None = None) -> int:
    """Add the values of exited processes into `<type>_folded.db` and remove their files; returns how many."""
    path = path or metrics_dir()
    folded = 0
    with _locked(path, exclusive=True):
        for filename in glob.glob(os.path.join(path, "*.db")):
            typ, _, pid = os.path.basename(filename)[:-3].rpartition("_")
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if typ in _SUMMED_TYPES:
                target = MmapedDict(os.path.join(path, f"{typ}_folded.db"))
                try:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(filename):
                        current, _ = target.read_value(key)
                        target.write_value(key, current + value, timestamp)
                finally:
                    target.close()
            elif not typ.startswith("gauge_live"):
                continue  # other gauges keep prometheus-client's own semantics
            os.remove(filename)
            folded += 1
    return folded


class HostFilesCollector:
    """The sums of every process's files in the host's directory: the platform's metrics only.

    Other libraries of the same processes (Flower's own metrics, say) may write there too; they
    are served where they belong.
    """

    def __init__(self, path: str | None = None):
        self.path = path or metrics_dir()

    def collect(self):
        with _locked(self.path, exclusive=False):
            files = glob.glob(os.path.join(self.path, "*.db"))
            merged = MultiProcessCollector.merge(files, accumulate=True)
        return [metric for metric in merged if metric.name.startswith("jobs_")]


def render() -> bytes:
    """The Prometheus exposition of this host's files (what every process of the host counted)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostFilesCollector())
    return generate_latest(registry)


# --- Process hooks: gunicorn's (project/gunicorn.conf.py) and Celery worker signals ----------


def on_server_start() -> None:
    """A web server or a worker starts: fold what exited processes left."""
    try:
        folded = fold_exited_processes()
    except OSError:
        logger.warning("could not fold the metrics files in %s", metrics_dir(), exc_info=True)
        return
    if folded:
        logger.info("metrics_folded files=%s dir=%s", folded, metrics_dir())


def on_process_exit(pid: int) -> None:
    mark_process_dead(pid, metrics_dir())


@worker_init.connect
def _worker_starts(**kwargs) -> None:
    on_server_start()


@worker_ready.connect
def _serve_worker_metrics(**kwargs) -> None:
    """On a host without a web server, the worker answers scrapes itself (JOBS_METRICS_PORT)."""
    port = settings.JOBS_METRICS_PORT
    if not port:
        return
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostFilesCollector())
    try:
        start_http_server(port, addr=settings.JOBS_METRICS_ADDR, registry=registry)
    except OSError as exc:
        # Another worker of this host serves the same directory already.
        logger.info("metrics port %s:%s not served by this worker: %s", settings.JOBS_METRICS_ADDR, port, exc)
        return
    logger.info("metrics served on http://%s:%s/metrics", settings.JOBS_METRICS_ADDR, port)
