"""Duplicate delivery on Amazon SQS (moto's emulator on loopback, not AWS), which SQS documents: at least once, so
sometimes twice. The same message sent twice, and a message whose visibility timeout lapses while its job runs,
give one run and one recorded result."""
import re

import pytest

from jobs.models import Job
from tests.faults.conftest import S, all_in, job_in, report, results_per_job, starts, submit_marked
from tests.support import publish_again, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DROPPED = "dropped message for a job that is not claimable"


def test_a_job_whose_message_sqs_delivers_twice_runs_once(use_sqs, worker_factory, user, tmp_path, record_property):
    sqs = use_sqs()
    jobs = []
    for _ in range(10):
        [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=0.3)
        publish_again(job)  # the same task message again, as SQS may deliver it
        jobs.append((job, marker))
    ids = [job.pk for job, _ in jobs]

    worker = worker_factory(concurrency=2, env=sqs.worker_env())
    all_in(ids, S.SUCCEEDED, timeout=60)
    wait_for(lambda: worker.log().count(DROPPED) == len(ids), timeout=30, message="every second copy to be dropped")

    assert [len(starts(marker)) for _, marker in jobs] == [1] * len(jobs)
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert results_per_job(ids) == {str(i): 1 for i in ids}
    report(record_property, jobs=len(ids), messages=2 * len(ids), runs=len(ids),
           copies_dropped=worker.log().count(DROPPED))


def test_a_message_whose_visibility_timeout_lapses_mid_run_is_dropped(use_sqs, worker_factory, user, tmp_path,
                                                                      record_property):
    # A visibility timeout shorter than the run: SQS hands the message out again while the job runs, which
    # is what a run longer than the queue's visibility timeout meets on AWS. The worker creates the queues.
    sqs = use_sqs(visibility_timeout=2)
    worker = worker_factory(concurrency=2, env=sqs.worker_env())
    attributes = sqs.server.client().get_queue_attributes(QueueUrl=sqs.queue_url("default"),
                                                          AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "2", "the queue takes the visibility timeout of the settings"
    [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=8)
    job_in(job.pk, S.RUNNING)

    dropped = re.compile(rf"{DROPPED} job={job.pk}")
    wait_for(lambda: dropped.search(worker.log()), timeout=7, interval=0.1,
             message="the copy SQS delivered again to be dropped")
    assert Job.objects.get(pk=job.pk).status == S.RUNNING, "the copy arrived while the first run was going"
    assert worker.log().count(f"[{job.pk}] received") >= 2

    done = job_in(job.pk, S.SUCCEEDED, timeout=30)
    assert done.attempts == 1 and len(starts(marker)) == 1
    assert results_per_job([job.pk]) == {str(job.pk): 1}
    report(record_property, deliveries=worker.log().count(f"[{job.pk}] received"), runs=len(starts(marker)),
           results=1)
