"""Real `celery beat` processes: a schedule added while beat runs is run each second; of two beats only one dispatches."""
import json
import time

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.infra.broker import broker_list_names
from jobs.models import Job
from jobs.tasks import SCHEDULED_JOB_TASK
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PROBE_QUEUE = "beatprobe"  # no worker consumes it: every dispatch stays there to be counted


def every_second():
    return IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)[0]


def probe_messages(redis_server) -> list[dict]:
    client = redis_server.client()
    return [json.loads(raw) for name in broker_list_names(PROBE_QUEUE) for raw in client.lrange(name, 0, -1)]


def test_beat_runs_a_schedule_added_while_it_runs(beat_factory, live_worker, user):
    beat = beat_factory()
    wait_for(lambda: beat.leads, timeout=20, message="the beat to take the lock")
    # Added after beat started: the database scheduler sees the change without a restart.
    PeriodicTask.objects.create(name="primes each second", task=SCHEDULED_JOB_TASK, interval=every_second(),
                                kwargs=json.dumps({"kind": "count_primes", "params": {"limit": 1000},
                                                   "owner": user.username}))
    jobs = Job.objects.filter(schedule_name="primes each second", status=Job.Status.SUCCEEDED)
    wait_for(lambda: jobs.count() >= 3, timeout=60, message="three scheduled jobs to succeed")
    job = jobs.first()
    assert (job.kind, job.params, job.owner) == ("count_primes", {"limit": 1000}, user)
    assert job.idempotency_key.startswith("schedule:")


def test_of_two_beats_one_dispatches_each_tick_and_the_other_takes_over(beat_factory, redis_server):
    PeriodicTask.objects.create(name="probe", task="jobs.periodic.aggregate_job_stats", interval=every_second(),
                                queue=PROBE_QUEUE)
    beats = [beat_factory(), beat_factory()]
    wait_for(lambda: any(b.leads for b in beats), timeout=20, message="one beat to take the lock")
    leader, standby = beats if beats[0].leads else beats[::-1]

    wait_for(lambda: len(probe_messages(redis_server)) >= 2, timeout=20, message="the first dispatches")
    first = len(probe_messages(redis_server))
    started = time.monotonic()
    wait_for(lambda: len(probe_messages(redis_server)) >= first + 6, timeout=30, message="six more dispatches")
    elapsed = time.monotonic() - started
    # One dispatch a second: two beats dispatching would send six in about three seconds.
    assert elapsed >= 4.5, f"six dispatches in {elapsed:.1f}s"
    assert not standby.leads and standby.sent() == 0
    assert leader.sent() == len(probe_messages(redis_server))
    assert len({m["headers"]["id"] for m in probe_messages(redis_server)}) == len(probe_messages(redis_server))

    leader.stop()  # a clean stop releases the lock at once
    wait_for(lambda: standby.sent() >= 2, timeout=20, message="the standby to take over")
    assert standby.leads
