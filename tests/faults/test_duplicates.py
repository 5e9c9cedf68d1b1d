"""Duplicate delivery: the same message published several times, and a message redelivered while its run goes on."""
import re

import pytest

from jobs import services
from jobs.models import Job
from tests.faults.conftest import S, all_in, job_in, report, results_per_job, starts, submit_marked
from tests.support import publish_again, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_published_three_times_runs_once(worker_factory, user, tmp_path, record_property):
    copies = 3
    jobs = []
    for _ in range(20):
        [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=0.3)
        for _ in range(copies - 1):
            publish_again(job)  # side by side in the queue: both pool processes get a copy at once
        jobs.append((job, marker))
    ids = [job.pk for job, _ in jobs]

    worker = worker_factory(concurrency=2)
    all_in(ids, S.SUCCEEDED, timeout=60)
    wait_for(lambda: worker.log().count("dropped message for a job that is not claimable") == 40, timeout=20,
             message="every extra copy to be dropped")

    assert [len(starts(marker)) for _, marker in jobs] == [1] * len(jobs)
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert results_per_job(ids) == {str(i): 1 for i in ids}
    report(record_property, jobs=len(ids), messages=len(ids) * copies, runs=len(ids),
           copies_dropped=worker.log().count("dropped message for a job that is not claimable"))


def test_a_message_redelivered_while_its_run_goes_on_is_dropped(worker_factory, user, tmp_path, record_property):
    # A visibility timeout shorter than the run: Redis hands the message out again mid-run,
    # which is what a run longer than JOBS_VISIBILITY_TIMEOUT would meet in production.
    env = {"JOBS_VISIBILITY_TIMEOUT": "2", "JOBS_RESTORE_INTERVAL": "1"}
    worker = worker_factory(concurrency=2, env=env)
    [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=8)
    job_in(job.pk, S.RUNNING)

    dropped = re.compile(rf"dropped message for a job that is not claimable job={job.pk}")
    wait_for(lambda: dropped.search(worker.log()), timeout=7, interval=0.1,
             message="the redelivered copy to be dropped")
    assert Job.objects.get(pk=job.pk).status == S.RUNNING, "the copy arrived while the first run was going"
    assert "Restoring" in worker.log() or worker.log().count(f"[{job.pk}] received") >= 2

    done = job_in(job.pk, S.SUCCEEDED, timeout=30)
    assert done.attempts == 1 and len(starts(marker)) == 1
    assert results_per_job([job.pk]) == {str(job.pk): 1}
    report(record_property, deliveries=worker.log().count(f"[{job.pk}] received"), runs=len(starts(marker)),
           results=1)
