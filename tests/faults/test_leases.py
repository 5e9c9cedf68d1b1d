"""Leases that follow the worker, and the ledger in charge: a dead worker's job runs again within the lease, Celery's
own writes never replace a finished job's result, workers live through Redis restarts, housekeeping keeps time."""
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult

from jobs import services
from jobs.infra.broker import decode_result, ready_message_ids
from jobs.models import Job, JobError
from jobs.schedules import install_schedules
from jobs.services import admission
from tests.faults.conftest import S, all_in, job_in, report, results_per_job, starts, status_counts, submit_marked
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LEASE, HEARTBEAT = 20, 5  # the defaults


def test_a_worker_killed_mid_job_has_its_job_run_again_within_the_lease(worker_factory, user, tmp_path,
                                                                       record_property):
    # An hour's time limit: what brings the job back is the lease, not the limit nor the visibility timeout.
    doomed = worker_factory(queues="default", concurrency=1)
    [(job, marker)] = submit_marked(user, "test_long_limit", tmp_path, seconds=15)
    job_in(job.pk, S.RUNNING)
    assert Job.objects.get(pk=job.pk).worker == doomed.hostname
    # A second worker only now, so that the first took the job.
    survivor = worker_factory(queues="default", concurrency=1)
    wait_for(lambda: starts(marker), timeout=10, message="the run to start")
    lease_at_kill = Job.objects.get(pk=job.pk).lease_expires_at
    assert lease_at_kill - timezone.now() <= timedelta(seconds=LEASE + 1), "a lease of seconds, not the time limit"

    doomed.kill_all()
    killed_at = time.monotonic()
    again = wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=[S.RUNNING, S.SUCCEEDED],
                                                worker=survivor.hostname).first(),
                     timeout=LEASE + HEARTBEAT + 30, interval=0.1, message="the job to run again on the survivor")
    took = time.monotonic() - killed_at
    done = job_in(job.pk, S.SUCCEEDED, timeout=30)

    assert len(starts(marker)) == 2 and done.attempts == 2
    [lost] = JobError.objects.filter(job=job)
    assert lost.error == f"worker lost: {doomed.hostname} stopped renewing the lease"
    assert results_per_job([job.pk]) == {str(job.pk): 1}
    report(record_property, ran_again_after_seconds=round(took, 1), lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT)
    assert took <= LEASE + HEARTBEAT + 3, f"ran again {took:.1f}s after the kill"
    assert again.worker == survivor.hostname


def test_a_broker_drop_right_after_a_finish_leaves_the_result_alone(worker_factory, user, tmp_path, redis_server,
                                                                   record_property):
    worker = worker_factory(queues="default", concurrency=1)
    [(job, marker)] = submit_marked(user, "test_linger", tmp_path, seconds=0.5, linger_after=5)
    # The finish has committed; the pool process has not yet told the main process, which still
    # holds the message unacknowledged. Redis goes: Celery cancels the run and writes RETRY.
    done = job_in(job.pk, S.SUCCEEDED, timeout=30)
    written = TaskResult.objects.get(task_id=str(job.pk))
    redis_server.stop()
    wait_for(lambda: "cannot be acknowledged after a connection loss" in worker.log(), timeout=30,
             message="Celery to cancel the unacknowledged run")
    redis_server.start()
    wait_for(lambda: worker.log().count("Connected to redis") >= 2, timeout=60, message="the worker to reconnect")

    kept = TaskResult.objects.get(task_id=str(job.pk))
    assert (kept.status, kept.result, kept.date_done) == ("SUCCESS", written.result, written.date_done)
    assert decode_result(kept) == {"slept": 0.5}
    assert Job.objects.get(pk=job.pk).status == S.SUCCEEDED and done.attempts == 1
    assert not JobError.objects.filter(job=job).exists()
    assert worker.process.poll() is None
    report(record_property, result_status=kept.status, runs=len(starts(marker)))


def test_workers_live_through_redis_restarts_under_load(worker_factory, user, redis_server, record_property):
    # Prefetching, so that the worker holds delivered, unacknowledged messages when Redis goes: closing that
    # channel made kombu 5.7 restore them through a connection it had already let go, and the worker exit.
    worker = worker_factory(queues="default", concurrency=2, extra_args=["--prefetch-multiplier", "8"])
    pid = worker.process.pid
    ids = []
    restarts = 6
    for restart in range(restarts):
        batch = [services.job_submit(user=user, kind="noop").job.pk for _ in range(400)]
        ids += batch
        wait_for(lambda: Job.objects.filter(pk__in=batch, status=S.SUCCEEDED).count() >= 50, timeout=60,
                 interval=0.05, message="the worker to be busy with the batch")
        assert redis_server.client().hlen("unacked") > 0
        redis_server.stop()
        time.sleep(0.5)  # the outage itself: Redis is down for this long
        redis_server.start()
        admission.reset()
        wait_for(lambda: worker.log().count("Connected to redis") >= restart + 2, timeout=60,
                 message="the worker to reconnect")
        assert worker.process.poll() is None, worker.log()[-3000:]

    # Redis came back empty each time: recovery republishes what was lost.
    def recovered():
        services.recover_jobs(stale_after=0)
        return Job.objects.filter(pk__in=ids, status=S.SUCCEEDED).count() == len(ids)

    try:
        wait_for(recovered, timeout=120, interval=2, message="every job to succeed")
    except AssertionError:
        pytest.fail(f"after the restarts: {status_counts(ids)}")
    assert worker.process.pid == pid and worker.process.poll() is None
    assert "Unrecoverable error" not in worker.log()
    assert results_per_job(ids) == {str(i): 1 for i in ids}
    report(record_property, jobs=len(ids), restarts=restarts, worker_pid_unchanged=True)


def test_housekeeping_keeps_time_while_every_job_slot_is_busy(worker_factory, beat_factory, user, tmp_path,
                                                             record_property):
    # Heartbeats (which publish due jobs too) out of the way: what publishes here is beat's task.
    slow_beats = {"JOBS_HEARTBEAT_SECONDS": "60", "JOBS_LEASE_SECONDS": "120"}
    worker_factory(queues="default", concurrency=1, env=slow_beats)
    worker_factory(queues="platform", pool="threads", concurrency=2, env=slow_beats)
    busy = submit_marked(user, "test_sleep", tmp_path, count=2, seconds=15)
    job_in(busy[0][0].pk, S.RUNNING)
    install_schedules()
    beat_factory()

    run_at = timezone.now() + timedelta(seconds=2)
    scheduled = services.job_submit(user=user, kind="noop", run_at=run_at).job
    published = wait_for(lambda: Job.objects.filter(pk=scheduled.pk, published_at__isnull=False).first(),
                         timeout=30, interval=0.1, message="publish-due to publish the scheduled job")
    late = (published.published_at - run_at).total_seconds()
    assert Job.objects.filter(pk=busy[0][0].pk, status=S.RUNNING).exists(), "the only job slot is still busy"
    # Housekeeping is not on the users' queues: the depth counts the two waiting jobs, nothing else
    # (once the message is in Redis: published_at is written just before the publish).
    wait_for(lambda: str(scheduled.pk) in ready_message_ids(["default"]), timeout=10,
             message="the scheduled job's message to be in its queue")
    assert admission.queue_snapshot(max_age=0).queues["default"].depth == 2
    report(record_property, published_after_run_at_seconds=round(late, 2))
    assert late <= 4, f"published {late:.1f}s after its run_at while the job worker was busy"
    all_in([j.pk for j, _ in busy] + [scheduled.pk], S.SUCCEEDED, timeout=60)
