"""Workers dying under jobs: a pool process killed, the whole worker killed, a job that kills its worker, a deploy."""
import os
import signal
import time

import pytest
from django_celery_results.models import TaskResult

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.models import Job, JobError
from tests.faults.conftest import S, all_in, job_in, report, results_per_job, starts, submit_marked
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def unacked(redis_server) -> int:
    """Messages delivered to a worker and not yet acknowledged (kombu's ack emulation on Redis)."""
    return redis_server.client().hlen("unacked")


def ready(redis_server, queue="default") -> int:
    client = redis_server.client()
    return sum(client.llen(name) for name in broker_list_names(queue))


def test_killing_the_pool_process_mid_job_runs_it_again_to_one_result(worker_factory, user, tmp_path,
                                                                       record_property):
    worker = worker_factory(concurrency=1)
    [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=3)
    job_in(job.pk, S.RUNNING)
    [victim] = wait_for(lambda: starts(marker), timeout=10, message="the run to start")
    assert victim in worker.pool_pids()

    os.kill(victim, signal.SIGKILL)
    done = job_in(job.pk, S.SUCCEEDED, timeout=60)

    runs = starts(marker)
    assert len(runs) == 2 and runs[1] != victim, runs
    assert done.attempts == 2
    assert results_per_job([job.pk]) == {str(job.pk): 1}
    assert TaskResult.objects.get(task_id=str(job.pk)).status == "SUCCESS"
    [lost] = JobError.objects.filter(job=job)
    assert lost.attempt == 1 and "worker process lost" in lost.error
    assert worker.process.poll() is None, "the worker's main process survives its pool process"
    report(record_property, runs=len(runs), attempts=done.attempts, results=1)


def test_killing_the_whole_worker_loses_nothing_within_visibility_timeout_plus_restore_interval(
        worker_factory, user, tmp_path, redis_server, record_property):
    visibility, restore_interval = 12, 1
    # The running jobs come back when their lease lapses (6 s, renewed every second while the worker
    # lived), before the visibility timeout brings back the messages the dead worker held.
    env = {"JOBS_VISIBILITY_TIMEOUT": str(visibility), "JOBS_RESTORE_INTERVAL": str(restore_interval),
           "JOBS_LEASE_SECONDS": "6", "JOBS_HEARTBEAT_SECONDS": "1"}
    run_seconds = 1.5
    first = worker_factory(concurrency=2, env=env, extra_args=["--prefetch-multiplier", "2"])
    jobs = submit_marked(user, "test_short_lease", tmp_path, count=8, seconds=run_seconds)
    ids = [job.pk for job, _ in jobs]

    def two_running_two_prefetched():
        started = sum(1 for _, marker in jobs if starts(marker))
        return started == 2 and Job.objects.filter(pk__in=ids, status=S.RUNNING).count() == 2 and \
            unacked(redis_server) == 4

    wait_for(two_running_two_prefetched, timeout=20, message="two jobs running and two more prefetched")
    first.kill_all()
    killed_at = time.monotonic()
    running_when_killed = list(Job.objects.filter(pk__in=ids, status=S.RUNNING).values_list("pk", flat=True))
    assert len(running_when_killed) == 2 and unacked(redis_server) == 4 and ready(redis_server) == 4
    client = redis_server.client()
    # When each held message was delivered: kombu's index of unacknowledged messages.
    held = dict(client.zrange("unacked_index", 0, -1, withscores=True))

    worker_factory(concurrency=2, env=env)
    second_ready = time.time()

    def all_restored():
        # A restored message is back in the queue, or already delivered again (a newer score).
        scores = [client.zscore("unacked_index", tag) for tag in held]
        return all(score is None or score > held[tag] for tag, score in zip(held, scores))

    wait_for(all_restored, timeout=visibility + restore_interval + 30, interval=0.1,
             message="the dead worker's messages to be restored")
    restored_at = time.time()
    restore_due = max(max(held.values()) + visibility, second_ready) + restore_interval
    # Then at most two rounds of two jobs run on the new worker.
    bound = visibility + restore_interval + 2 * run_seconds + 6
    all_in(ids, S.SUCCEEDED, timeout=bound + 30)
    took = time.monotonic() - killed_at

    assert results_per_job(ids) == {str(i): 1 for i in ids}
    attempts = dict(Job.objects.filter(pk__in=ids).values_list("pk", "attempts"))
    for job, marker in jobs:
        expected = 2 if job.pk in running_when_killed else 1
        assert attempts[job.pk] == expected and len(starts(marker)) == expected, (job.pk, starts(marker))
    # Acknowledged after each run returns: nothing stays held.
    wait_for(lambda: unacked(redis_server) == 0, timeout=10, message="every message to be acknowledged")
    report(record_property, jobs=len(ids), rerun=len(running_when_killed), recovered_in_seconds=round(took, 1),
           bound_seconds=bound, restored_after_due_seconds=round(restored_at - restore_due, 2))
    assert restored_at <= restore_due + 1.5, (
        f"restored {restored_at - restore_due:.1f}s after visibility {visibility}s + interval {restore_interval}s")
    assert took <= bound, f"recovery took {took:.1f}s, over visibility {visibility}s + interval {restore_interval}s"


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts_while_others_flow(
        worker_factory, user, tmp_path, record_property):
    worker = worker_factory(concurrency=2)
    [(poison, marker)] = submit_marked(user, "test_poison", tmp_path)
    others = [services.job_submit(user=user, kind="noop").job.pk for _ in range(30)]

    failed = job_in(poison.pk, S.FAILED, timeout=90)
    all_in(others, S.SUCCEEDED, timeout=60)

    assert failed.attempts == 3 == len(starts(marker))
    assert "worker process lost" in failed.error
    assert [e.attempt for e in JobError.objects.filter(job=poison)] == [1, 2, 3]
    result = TaskResult.objects.get(task_id=str(poison.pk))
    assert result.status == "FAILURE" and "worker process lost" in result.result
    assert results_per_job(others) == {str(i): 1 for i in others}
    # Its requeued message is dropped: the job is over.
    wait_for(lambda: "dropped message for a job that is not claimable job=" + str(poison.pk) in worker.log(),
             timeout=15, message="the last copy of the poison message to be dropped")
    after = services.job_submit(user=user, kind="noop").job
    job_in(after.pk, S.SUCCEEDED)
    assert worker.process.poll() is None
    report(record_property, poison_runs=len(starts(marker)), other_jobs_succeeded=len(others))


def test_sigterm_finishes_running_jobs_and_hands_back_the_rest(worker_factory, user, tmp_path, redis_server,
                                                              record_property):
    first = worker_factory(concurrency=2, extra_args=["--prefetch-multiplier", "2"])
    jobs = submit_marked(user, "test_sleep", tmp_path, count=6, seconds=3)
    ids = [job.pk for job, _ in jobs]

    def two_running_two_prefetched():
        return Job.objects.filter(pk__in=ids, status=S.RUNNING).count() == 2 and unacked(redis_server) == 4

    wait_for(two_running_two_prefetched, timeout=20, message="two jobs running and two more prefetched")
    running = set(Job.objects.filter(pk__in=ids, status=S.RUNNING).values_list("pk", flat=True))
    first.signal(signal.SIGTERM)
    assert first.process.wait(30) == 0, first.log()[-3000:]

    statuses = dict(Job.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert {pk for pk, st in statuses.items() if st == S.SUCCEEDED} == running, statuses
    assert all(statuses[pk] == S.QUEUED for pk in ids if pk not in running), statuses
    # The prefetched messages went back to the queue at shutdown; none is left held.
    assert unacked(redis_server) == 0 and ready(redis_server) == 4

    worker_factory(concurrency=2)
    all_in(ids, S.SUCCEEDED, timeout=60)
    assert results_per_job(ids) == {str(i): 1 for i in ids}
    for job, marker in jobs:
        assert len(starts(marker)) == 1, (job.pk, starts(marker))
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    report(record_property, jobs=len(ids), finished_during_shutdown=len(running), handed_back=len(ids) - len(running))
