"""A paused queue with real workers: its jobs wait (on workers started before the pause and after it), run within
seconds of the resume, and a worker that missed the broadcast catches up at its next heartbeat."""
import time

import pytest

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.models import Job, QueuePause
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
S = Job.Status

WAIT = 10  # seconds a paused queue's job is watched
RESUMED_WITHIN = 5  # seconds from the resume to the job's run


def waiting_in_redis(redis_server, job: Job) -> bool:
    client = redis_server.client()
    return any(str(job.id).encode() in raw for name in broker_list_names(job.queue)
               for raw in client.lrange(name, 0, -1))


def stays_queued(job: Job, redis_server, seconds: float, *, in_broker: bool = True) -> None:
    """The job is not run for `seconds`: still queued, and (`in_broker`) its message still in its queue."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current = Job.objects.get(pk=job.pk)
        assert current.status == S.QUEUED and current.attempts == 0, f"the paused queue's job was taken: {current}"
        assert not in_broker or waiting_in_redis(redis_server, job), "its message left the paused queue"
        time.sleep(0.25)


def succeeded(job: Job, timeout: float) -> Job:
    return wait_for(lambda: Job.objects.filter(pk=job.pk, status=S.SUCCEEDED).first(), timeout=timeout,
                    interval=0.05, message=f"job {job.id} to succeed")


@pytest.mark.parametrize("started", ["before the pause", "after the pause"])
def test_a_paused_queues_job_waits_and_runs_within_seconds_of_the_resume(worker_factory, user, redis_server,
                                                                        started):
    if started == "before the pause":
        worker = worker_factory(queues="default")
        services.queue_pause(queue="default", actor=None)
        wait_for(lambda: "Canceling queue default" in worker.log(), timeout=10,
                 message="the worker to stop consuming the paused queue")
    else:
        services.queue_pause(queue="default", actor=None)
        worker = worker_factory(queues="default")
        assert "queue default is paused: not consuming it" in worker.log()
    job = services.job_submit(user=user, kind="noop").job
    stays_queued(job, redis_server, WAIT)

    resumed_at = time.monotonic()
    services.queue_resume(queue="default", actor=None)
    done = succeeded(job, timeout=RESUMED_WITHIN)
    assert time.monotonic() - resumed_at < RESUMED_WITHIN
    assert done.worker == worker.hostname and done.attempts == 1


def test_a_worker_that_missed_the_broadcast_catches_up_at_its_heartbeat(worker_factory, user, redis_server):
    worker = worker_factory(queues="default,cpu", env={"JOBS_HEARTBEAT_SECONDS": "1"})
    # Paused and resumed behind the workers' backs: no broadcast, only the database says so.
    QueuePause.objects.create(queue="default")
    wait_for(lambda: "Canceling queue default" in worker.log(), timeout=10,
             message="the heartbeat to stop the worker consuming the paused queue")
    job = services.job_submit(user=user, kind="noop").job
    other = services.job_submit(user=user, kind="count_primes", params={"limit": 100}).job
    succeeded(other, timeout=10)  # the other queue runs on
    stays_queued(job, redis_server, 3)
    QueuePause.objects.all().delete()
    succeeded(job, timeout=RESUMED_WITHIN)


def test_a_running_job_finishes_and_one_sent_as_the_pause_came_waits_for_the_resume(worker_factory, user,
                                                                                    redis_server):
    worker_factory(queues="default")
    running = services.job_submit(user=user, kind="steps", params={"steps": 4, "step_seconds": 0.5}).job
    wait_for(lambda: Job.objects.filter(pk=running.pk, status=S.RUNNING).exists(), timeout=20,
             message="the job to start")
    services.queue_pause(queue="default", actor=None)
    # Sent at once, it races the broadcast: the worker may already be fetching from the queue. Then the claim
    # hands it back (its message dropped, the job left for publish-due after the resume) instead of running it.
    waiting = services.job_submit(user=user, kind="noop").job
    succeeded(running, timeout=20)
    stays_queued(waiting, redis_server, 3, in_broker=False)
    services.queue_resume(queue="default", actor=None)
    succeeded(waiting, timeout=RESUMED_WITHIN)
