"""The database goes away for a few seconds while jobs run: 503s instead of 500s, workers wait it out, nothing lost.

SQLite: another connection holds the write lock. PostgreSQL: the test database refuses
connections and every session on it is terminated (the server itself keeps running).
"""
import re
import sqlite3
import time
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test import Client

from jobs.models import Job, Worker
from tests.faults.conftest import S, all_in, report, results_per_job, starts, submit_marked
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

OUTAGE_SECONDS = 5


@contextmanager
def database_down():
    if connection.vendor == "sqlite":
        locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=10, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        return
    import psycopg
    from psycopg import sql

    s = connection.settings_dict
    admin = psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"],
                            password=s["PASSWORD"] or None, dbname="postgres", autocommit=True)
    name = sql.Identifier(s["NAME"])
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
    try:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                      "pg_backend_pid()", [s["NAME"]])
        yield
    finally:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
        admin.close()
        connection.close()


@pytest.fixture
def quick_lock_timeout():
    """SQLite: this process's writes give up on a held lock after half a second, as the workers' do."""
    if connection.vendor != "sqlite":
        yield {}
        return
    options = connection.settings_dict["OPTIONS"]
    before = options.get("timeout")
    options["timeout"] = 0.5
    connection.close()
    yield {"DJANGO_SQLITE_TIMEOUT": "0.5"}
    options["timeout"] = before
    connection.close()


def test_jobs_finish_and_requests_get_503_through_a_database_outage(worker_factory, user, api, tmp_path,
                                                                    quick_lock_timeout, record_property):
    worker = worker_factory(concurrency=2, env=quick_lock_timeout)
    browser = Client()
    browser.force_login(user)
    jobs = submit_marked(user, "test_sleep", tmp_path, count=6, seconds=2)
    ids = [job.pk for job, _ in jobs]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=S.RUNNING).count() == 2, timeout=20,
             message="two jobs running")
    running = list(Job.objects.filter(pk__in=ids, status=S.RUNNING).values_list("pk", flat=True))
    jobs_before = Job.objects.count()

    def finish_retried(job_id):
        return re.search(rf"database unavailable for finish job={job_id} retry_in=", worker.log())

    with database_down():
        down_at = time.monotonic()
        submitted = api.post("/api/jobs", {"kind": "noop"})
        assert submitted.status_code == 503, submitted.content
        assert submitted.json()["error"] == "database_unavailable" and submitted["Retry-After"]
        form = browser.post("/jobs/new", {"kind": "noop"})
        assert form.status_code == 503 and b"database is not answering" in form.content
        health = browser.get("/healthz")
        if connection.vendor == "sqlite":
            assert health.status_code == 200, "a held write lock does not stop reads"
        else:
            listed = api.get("/api/jobs")
            assert listed.status_code == 503 and listed.json()["error"] == "database_unavailable"
            assert health.status_code == 503 and health.json()["database"].startswith("down")
        # The running jobs finish their work while the database is away, and keep trying to record it.
        wait_for(lambda: all(finish_retried(pk) for pk in running), timeout=30,
                 message="both running jobs to retry writing their finish")
        wait_for(lambda: time.monotonic() - down_at >= OUTAGE_SECONDS, timeout=OUTAGE_SECONDS + 1)
    outage = time.monotonic() - down_at

    took = all_in(ids, S.SUCCEEDED, timeout=40)
    assert Job.objects.count() == jobs_before, "the refused submissions wrote nothing"
    assert results_per_job(ids) == {str(i): 1 for i in ids}
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert all(len(starts(marker)) == 1 for _, marker in jobs), "a job that had finished ran again"
    retries = worker.log().count("database unavailable for")
    assert api.post("/api/jobs", {"kind": "noop"}).status_code == 202
    report(record_property, database=connection.vendor, jobs=len(ids), finished_during_outage=len(running),
           outage_seconds=round(outage, 1), write_retries_logged=retries, seconds_to_finish_after=round(took, 1))


def test_a_database_outage_longer_than_the_lease_takes_no_live_run_away(worker_factory, user, tmp_path,
                                                                        quick_lock_timeout, record_property):
    # Every lease lapses during the outage. The idle worker beats far more often than the one running
    # the job, so it reaches the database first afterwards: it must leave the job to its live worker.
    lease = {"JOBS_LEASE_SECONDS": "3", **quick_lock_timeout}
    owner = worker_factory(queues="default", concurrency=1, env={**lease, "JOBS_HEARTBEAT_SECONDS": "1"})
    [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=14)
    wait_for(lambda: starts(marker), timeout=30, message="the run to start")
    idle = worker_factory(queues="default", concurrency=1, env={**lease, "JOBS_HEARTBEAT_SECONDS": "0.2"})
    wait_for(lambda: Worker.objects.filter(name__in=[owner.hostname, idle.hostname]).count() == 2, timeout=30,
             message="both workers to have beaten before the outage")

    with database_down():
        time.sleep(6)  # the outage itself: twice the lease
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=[S.SUCCEEDED, S.FAILED]).first(),
                    timeout=60, interval=0.2, message="the job to finish")

    assert done.status == S.SUCCEEDED and done.attempts == 1 and done.worker == owner.hostname
    assert len(starts(marker)) == 1, "run once: its live worker kept it"
    assert not done.errors.exists()
    assert results_per_job([job.pk]) == {str(job.pk): 1}
    report(record_property, outage_seconds=6, lease_seconds=3, runs=len(starts(marker)))
