"""Real `celery beat` processes: a schedule added while beat runs is run each second; of two beats only one dispatches."""
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.infra.broker import broker_list_names
from jobs.models import Job
from jobs.tasks import SCHEDULED_JOB_TASK
from tests.support import BASE_DIR, LOG_DIR, database_url_for_subprocess, stop_group, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SENT = "Sending due task"
PROBE_QUEUE = "beatprobe"  # no worker consumes it: every dispatch stays there to be counted


class Beat:
    """A `celery beat` process started as the Procfile starts it; its process group is killed at teardown."""

    def __init__(self, redis_url: str):
        self.log_path = LOG_DIR / f"beat-{uuid.uuid4().hex[:8]}.log"
        self.env = {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                    "DATABASE_URL": database_url_for_subprocess(), "PYTHONUNBUFFERED": "1"}
        procfile = dict(line.split(": ", 1) for line in (BASE_DIR / "Procfile").read_text().splitlines()
                        if ": " in line and not line.startswith("#"))
        self.args = [sys.executable, "-m", *procfile["beat"].split()]
        self.process = None

    def start(self) -> "Beat":
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.args, cwd=BASE_DIR, env=self.env, stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or "beat: Starting..." in self.log(), timeout=60,
                 message="beat to start")
        assert self.process.poll() is None, self.log()[-3000:]
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def sent(self) -> int:
        return self.log().count(SENT)

    @property
    def leads(self) -> bool:
        return "beat lock taken" in self.log()

    def stop(self, timeout: float = 15) -> None:
        if self.process is not None:
            stop_group(self.process, timeout)


@pytest.fixture
def beat_factory(redis_server):
    started = []

    def start() -> Beat:
        beat = Beat(redis_server.url)
        started.append(beat)
        return beat.start()

    yield start
    for beat in started:
        beat.stop()


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
    PeriodicTask.objects.create(name="probe", task="jobs.periodic.publish_due_jobs", interval=every_second(),
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
