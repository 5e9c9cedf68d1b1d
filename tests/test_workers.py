"""The worker registry and leases on their own: heartbeats renew only a worker's own runs, lapsed leases are taken
back at once, runs Celery stops are handed back, and recovery trusts only live workers' held messages."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import selectors, services
from jobs.infra.broker import broker_list_names, broker_started_at
from jobs.models import Job, JobError, Worker
from jobs.registry import get_kind
from tests.support import wait_for

pytestmark = pytest.mark.django_db
S = Job.Status


@pytest.fixture
def noop():
    return get_kind("noop")


def running(user, noop, worker="w1@host", attempt_limit=3):
    job = services.job_submit(user=user, kind="noop").job
    Job.objects.filter(pk=job.pk).update(attempt_limit=attempt_limit)
    services.job_claim(job_id=str(job.id), kind=noop, worker=worker)
    job.refresh_from_db()
    return job


def beat(name="w1@host", running_ids=(), held_ids=(), pid=1):
    return services.worker_heartbeat(name=name, pid=pid, queues=["default"], concurrency=2,
                                     running_ids=[str(i) for i in running_ids], held_ids=[str(i) for i in held_ids])


def test_a_claim_holds_a_short_lease_not_the_time_limit(user, noop, settings):
    job = running(user, noop)
    left = (job.lease_expires_at - timezone.now()).total_seconds()
    assert settings.JOBS_LEASE_SECONDS - 2 < left <= settings.JOBS_LEASE_SECONDS


def test_a_heartbeat_renews_only_the_runs_its_worker_claimed(user, noop, settings):
    mine, theirs = running(user, noop, "w1@host"), running(user, noop, "w2@host")
    stale = timezone.now() + timedelta(seconds=1)
    Job.objects.filter(pk__in=[mine.pk, theirs.pk]).update(lease_expires_at=stale)

    # w1 holds a duplicate message of w2's job too: that lease is w2's to renew.
    assert beat("w1@host", running_ids=[mine.pk, theirs.pk]) == 1
    renewed = dict(Job.objects.values_list("pk", "lease_expires_at"))
    assert renewed[mine.pk] > stale + timedelta(seconds=settings.JOBS_LEASE_SECONDS - 3)
    assert renewed[theirs.pk] == stale


def test_the_registry_shows_live_workers_and_forgets_stopped_and_silent_ones(settings):
    beat("a@host", held_ids=["x"])
    beat("b@host", held_ids=["y"])
    beat("c@host", held_ids=["z"])
    services.worker_stopped(name="b@host", pid=1)
    Worker.objects.filter(name="c@host").update(
        last_seen_at=timezone.now() - timedelta(seconds=settings.JOBS_LEASE_SECONDS + 1))
    assert [w.name for w in selectors.workers_online()] == ["a@host"]
    assert services.held_by_live_workers() == {"x"}
    beat("b@host", pid=2)  # started again: a new life under the same name
    restarted = Worker.objects.get(name="b@host")
    assert restarted.pid == 2 and restarted.stopped_at is None


def test_a_lapsed_lease_is_taken_back_at_once_and_waits_for_a_new_message(user, noop):
    job = running(user, noop)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    within = running(user, noop, "w2@host")

    assert services.jobs_reclaim_lapsed() == {"stuck_retried": 1, "stuck_failed": 0}
    job.refresh_from_db()
    assert job.status == S.RETRYING and job.published_at is None and job.next_attempt_at <= timezone.now()
    assert job.attempts == 1, "a worker's death costs the attempt"
    assert [e.error for e in JobError.objects.filter(job=job)] == ["worker lost: w1@host stopped renewing the lease"]
    assert Job.objects.get(pk=within.pk).status == S.RUNNING
    assert services.jobs_reclaim_lapsed() == {"stuck_retried": 0, "stuck_failed": 0}, "taken back once"
    assert Job.objects.filter(pk=job.pk).due().exists()


def test_a_run_handed_back_gives_its_attempt_back_and_only_its_own_workers(user, noop):
    job = running(user, noop, attempt_limit=1)
    assert services.job_run_lost(job_id=str(job.id), worker="other@host", handed_back=True, error="x") is None
    outcome = services.job_run_lost(job_id=str(job.id), worker="w1@host", handed_back=True,
                                    error="interrupted: shutdown")
    job.refresh_from_db()
    assert outcome.retry_in == 0 and job.status == S.RETRYING and job.attempts == 0
    again = services.job_claim(job_id=str(job.id), kind=noop, worker="w2@host")
    assert again.attempt == 1, "its only attempt is still there"


def test_a_lost_run_without_attempts_left_fails(user, noop):
    job = running(user, noop, attempt_limit=1)
    outcome = services.job_run_lost(job_id=str(job.id), worker="w1@host", error="worker process lost")
    job.refresh_from_db()
    assert outcome.retry_in is None and job.status == S.FAILED


def test_publish_due_sends_the_jobs_that_were_handed_back(user, noop, redis_server,
                                                         django_capture_on_commit_callbacks):
    job = running(user, noop)
    services.job_run_lost(job_id=str(job.id), worker="w1@host", handed_back=True, error="interrupted")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.jobs_publish_due() == 1
    job.refresh_from_db()
    assert job.published_at is not None
    client = redis_server.client()
    waiting = [json.loads(raw)["headers"]["id"] for name in broker_list_names("default")
               for raw in client.lrange(name, 0, -1)]
    assert waiting == [str(job.id)]


def test_recovery_trusts_a_message_held_by_a_live_worker_not_one_a_dead_worker_held(user, noop, redis_server):
    job = services.job_submit(user=user, kind="noop").job
    redis_server.client().flushall()  # its message was delivered: no longer in the queue
    beat("w1@host", held_ids=[job.pk])
    assert services.recover_jobs(stale_after=0)["republished"] == 0, "a live worker holds it"
    Worker.objects.filter(name="w1@host").update(stopped_at=timezone.now())
    assert services.recover_jobs(stale_after=0)["republished"] == 1, "its holder is gone"


def test_jobs_published_before_redis_restarted_are_republished_without_waiting(user, redis_server):
    from jobs.infra import redis as redis_clients

    job = services.job_submit(user=user, kind="noop").job
    published_at = timezone.now()
    Job.objects.filter(pk=job.pk).update(published_at=published_at)
    # Redis's uptime is in whole seconds: wait until it shows Redis up since before the publish.
    wait_for(lambda: broker_started_at() <= published_at, timeout=5, message="Redis to be up since the publish")
    redis_server.client().flushall()  # the message is gone, but just now: not stale yet
    assert services.recover_jobs()["republished"] == 0

    redis_server.stop()
    redis_server.start()  # empty: whatever was published before now is lost
    redis_clients.reset()
    assert services.recover_jobs()["republished"] == 1
