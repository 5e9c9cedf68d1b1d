"""User schedules with a real beat and a real worker: run now, pause and resume, and runs missed while no beat ran."""
import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import services
from jobs.infra import counters
from jobs.models import Job
from tests.support import kill_group, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def create(user, name, **fields):
    return services.schedule_create(user=user, name=name, **{"kind": "noop", **fields})


def runs(name: str):
    return Job.objects.filter(schedule_name=name)


def test_run_now_through_the_api_is_a_job_a_worker_runs(api, user, live_worker, beat_factory):
    beat = beat_factory()
    wait_for(lambda: beat.leads, timeout=20, message="the beat to take the lock")
    schedule = api.post("/api/schedules", {"name": "hourly primes", "kind": "count_primes",
                                           "params": {"limit": 20000}, "every_seconds": 3600}).json()
    response = api.post(f"/api/schedules/{schedule['id']}/run")
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["id"])
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED, timeout=60,
             message="the run-now job to succeed")
    body = api.get(f"/api/schedules/{schedule['id']}/runs").json()
    assert [(j["id"], j["status"], j["trigger"]) for j in body["jobs"]] == [(str(job.id), "succeeded", "run now")]
    assert body["jobs"][0]["duration_seconds"] >= 0
    # Beat sent nothing of its own: the next regular run is an hour after the schedule was made.
    assert runs("hourly primes").count() == 1


def test_a_paused_schedule_sends_nothing_until_resumed(user, live_worker, beat_factory):
    beat = beat_factory()
    wait_for(lambda: beat.leads, timeout=20, message="the beat to take the lock")
    task = create(user, "every second", every_seconds=1)
    wait_for(lambda: runs("every second").filter(status=Job.Status.SUCCEEDED).count() >= 2, timeout=60,
             message="two runs")
    services.schedule_pause(user=user, task=task)
    time.sleep(6)  # beat notices a change at its next tick (at most 5 s)
    paused_at = runs("every second").count()
    time.sleep(4)
    assert runs("every second").count() == paused_at, "runs went on while paused"
    services.schedule_resume(user=user, task=PeriodicTask.objects.get(pk=task.pk))
    wait_for(lambda: runs("every second").count() >= paused_at + 2, timeout=30, message="runs after the resume")


def test_runs_missed_while_beat_was_down_are_counted_and_caught_up_by_each_policy(user, live_worker, beat_factory):
    """Two schedules every 30 s whose last runs were 95 s ago: three runs missed each. "once" runs one at once,
    "skip" runs none until its next regular time, 25 s after the last missed one."""
    long_ago = timezone.now() - timedelta(seconds=95)
    for name, policy in (("once", "once"), ("skip", "skip")):
        task = create(user, name, every_seconds=30, catch_up=policy)
        PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=long_ago)
    beat = beat_factory()
    wait_for(lambda: beat.leads, timeout=20, message="the beat to take the lock")
    wait_for(lambda: runs("once").filter(status=Job.Status.SUCCEEDED).exists(), timeout=30,
             message="the one catch-up run")
    time.sleep(5)
    assert runs("once").count() == 1, "one catch-up run, not one per missed run"
    assert runs("skip").count() == 0
    counts = counters.schedule_counts(["once", "skip"])
    assert counts["once"]["missed"] == counts["skip"]["missed"] == 3
    skip = PeriodicTask.objects.get(name="skip")
    assert abs(skip.last_run_at - (long_ago + timedelta(seconds=90))) < timedelta(milliseconds=1)
    assert "missed 3 run(s)" in beat.log()


def test_a_beat_killed_and_started_again_counts_missed_runs_from_its_last_send(user, live_worker, beat_factory,
                                                                              redis_server):
    """The database's last_run_at lags (beat writes it every 30 s); the last send, kept in Redis, does not."""
    create(user, "every 2 s", every_seconds=2, catch_up="skip")
    first = beat_factory()
    wait_for(lambda: first.leads, timeout=20, message="the beat to take the lock")
    wait_for(lambda: runs("every 2 s").count() >= 3, timeout=30, message="three runs")
    kill_group(first.process)  # no clean stop: nothing more is written to the database
    redis_server.client().delete("jobs:beat:leader")  # as if its lock had expired
    sent = counters.schedules_sent(["every 2 s"])["every 2 s"]
    time.sleep(7)
    second = beat_factory()
    wait_for(lambda: second.leads, timeout=20, message="the new beat to take the lock")
    event = wait_for(lambda: counters.schedule_log("every 2 s"), timeout=10, message="the missed runs")[0]
    assert event["event"] == "missed" and event["policy"] == "skip"
    assert abs(event["since"] - sent) < 0.001
    assert event["missed"] == int((event["at"] - sent) // 2) >= 3
    task = PeriodicTask.objects.get(name="every 2 s")
    assert json.loads(task.kwargs)["catch_up"] == "skip"
