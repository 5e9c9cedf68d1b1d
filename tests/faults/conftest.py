"""Helpers for fault tests: submitting marked jobs, waiting on many jobs, counting runs and results."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from django_celery_results.models import TaskResult

from jobs import services
from jobs.models import Job
from tests.support import wait_for

S = Job.Status


def starts(marker: Path) -> list[int]:
    """The pids that started the job, one per run (the test kinds append a line at each start)."""
    try:
        return [int(line) for line in marker.read_text().split()]
    except FileNotFoundError:
        return []


def submit_marked(user, kind: str, tmp_path: Path, count: int = 1, **params) -> list[tuple[Job, Path]]:
    jobs = []
    for _ in range(count):
        marker = tmp_path / f"starts-{len(list(tmp_path.glob('starts-*')))}"
        marker.touch()
        job = services.job_submit(user=user, kind=kind, params={**params, "marker": str(marker)}).job
        jobs.append((job, marker))
    return jobs


def job_in(job_id, *statuses, timeout: float = 30) -> Job:
    return wait_for(lambda: Job.objects.filter(pk=job_id, status__in=statuses).first(), timeout=timeout,
                    message=f"job {job_id} to be {'/'.join(statuses)}")


def all_in(job_ids, *statuses, timeout: float) -> float:
    """Wait until every job is in one of `statuses`; returns the seconds it took."""
    started = time.monotonic()
    ids = list(job_ids)

    def done():
        return Job.objects.filter(pk__in=ids, status__in=statuses).count() == len(ids)

    try:
        wait_for(done, timeout=timeout, interval=0.2, message=f"{len(ids)} jobs to be {'/'.join(statuses)}")
    except pytest.fail.Exception:
        pytest.fail(f"after {timeout}s the {len(ids)} jobs are {status_counts(ids)}, not all {'/'.join(statuses)}")
    return time.monotonic() - started


def status_counts(job_ids) -> dict[str, int]:
    from django.db.models import Count

    return dict(Job.objects.filter(pk__in=list(job_ids)).values_list("status").annotate(n=Count("id")))


def results_per_job(job_ids) -> dict[str, int]:
    """How many TaskResult rows each job has (the table's task_id is unique, so 0 or 1)."""
    ids = [str(i) for i in job_ids]
    found = dict.fromkeys(ids, 0)
    for task_id in TaskResult.objects.filter(task_id__in=ids).values_list("task_id", flat=True):
        found[task_id] += 1
    return found


def report(record_property, **counts) -> None:
    """Put the test's counts in its output and in the JUnit report."""
    line = " ".join(f"{k}={v}" for k, v in counts.items())
    print(f"\n[fault counts] {line}")
    for key, value in counts.items():
        record_property(key, value)
