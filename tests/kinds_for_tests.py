"""Job kinds that misbehave on purpose, for tests of limits and faults (loaded via JOBS_KIND_MODULES)."""
import os
import time

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun
from pydantic import Field

from jobs.kinds.compute import StrictParams
from jobs.registry import job_kind


class SleepParams(StrictParams):
    seconds: float = Field(1.0, ge=0, le=600)
    marker: str = Field("", max_length=200, description="A file to append a line to at each start.")


def _mark(path: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")


@job_kind("test_sleep", params=SleepParams, max_attempts=3, soft_time_limit=30, time_limit=40)
def test_sleep(ctx, params: SleepParams) -> dict:
    """Wait in small steps, checking for cancellation; notes each start in a marker file."""
    _mark(params.marker)
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        ctx.progress(int(params.seconds * 1000 - (deadline - time.monotonic()) * 1000), int(params.seconds * 1000))
        time.sleep(0.02)
    return {"slept": params.seconds}


@job_kind("test_soft_limit", params=SleepParams, max_attempts=2, soft_time_limit=1, time_limit=10)
def test_soft_limit(ctx, params: SleepParams) -> dict:
    """Runs past its one-second soft time limit."""
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@job_kind("test_hard_limit", params=SleepParams, max_attempts=2, soft_time_limit=1, time_limit=2)
def test_hard_limit(ctx, params: SleepParams) -> dict:
    """Ignores its soft limit and is killed at its hard limit."""
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            continue
    return {"slept": params.seconds}


@job_kind("test_poison", params=SleepParams, max_attempts=3)
def test_poison(ctx, params: SleepParams) -> None:
    """Kills its own worker process every time it runs."""
    _mark(params.marker)
    os._exit(1)


@job_kind("test_terminable", params=SleepParams, max_attempts=1, terminable=True)
def test_terminable(ctx, params: SleepParams) -> dict:
    """Blocks without progress checks; cancel has to terminate it."""
    _mark(params.marker)
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@job_kind("test_short_lease", params=SleepParams, max_attempts=3, soft_time_limit=3, time_limit=4)
def test_short_lease(ctx, params: SleepParams) -> dict:
    """Sleeps within a four-second hard limit: its lease (limit + 5 s) ends before a short visibility timeout."""
    _mark(params.marker)
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@job_kind("test_busy", params=SleepParams, max_attempts=3, soft_time_limit=15, time_limit=16)
def test_busy(ctx, params: SleepParams) -> dict:
    """Keeps a worker busy for a while; a lease of 21 s lets recovery take it over soon after its worker is gone."""
    _mark(params.marker)
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@job_kind("test_long_limit", params=SleepParams, max_attempts=3, soft_time_limit=3000, time_limit=3600)
def test_long_limit(ctx, params: SleepParams) -> dict:
    """Sleeps under an hour's time limit: how soon it comes back after its worker dies is the lease's doing."""
    _mark(params.marker)
    time.sleep(params.seconds)
    return {"slept": params.seconds}


class LingerParams(SleepParams):
    linger_after: float = Field(0, ge=0, le=60, description="Seconds the pool process waits after the finish "
                                "committed, before it hands the outcome to the worker's main process.")


@job_kind("test_linger", params=LingerParams, max_attempts=1)
def test_linger(ctx, params: LingerParams) -> dict:
    """Sleeps, finishes, then lingers (see _linger_after_finish): the window in which Celery, if the broker drops,
    sees the run as unacknowledged and cancels it, though the ledger has recorded its result."""
    _mark(params.marker)
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@task_postrun.connect
def _linger_after_finish(sender=None, args=None, **kwargs) -> None:
    params = args[1] if args and len(args) > 1 and isinstance(args[1], dict) else {}
    if getattr(sender, "name", "") == "jobs.test_linger" and params.get("linger_after"):
        time.sleep(params["linger_after"])
