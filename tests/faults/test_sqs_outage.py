"""Amazon SQS out of reach of a worker for a while (moto's emulator on loopback behind a relay the test cuts, not
AWS): the worker lives through its failed receives, the job it runs finishes once, and work goes on after."""
import time

import pytest

from jobs import services
from jobs.models import Job
from tests.faults.conftest import S, job_in, report, results_per_job, starts, submit_marked
from tests.support import TcpGate, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_lives_through_sqs_out_of_reach(use_sqs, worker_factory, user, tmp_path, record_property):
    sqs = use_sqs()
    gate = TcpGate(sqs.server.port).open()
    try:
        # Long polls of 2 s: a receive cut on the client's side goes on at the server until its wait ends, and
        # takes a message sent meanwhile with it (invisible, then, for the visibility timeout). The outage is
        # longer than that here; on AWS, recovery republishes such a job (its queue shows nothing waiting).
        worker = worker_factory(queues="default", concurrency=2, env=sqs.worker_env(
            CELERY_BROKER_URL=f"sqs://127.0.0.1:{gate.port}", JOBS_SQS_WAIT_SECONDS="2"))
        [(job, marker)] = submit_marked(user, "test_sleep", tmp_path, seconds=6)
        job_in(job.pk, S.RUNNING)

        gate.close()  # the long poll in flight is cut, and every receive fails while the gate stays shut
        wait_for(lambda: "sqs receive failed" in worker.log(), timeout=10, message="a receive to fail")
        time.sleep(3)
        assert worker.process.poll() is None, worker.log()[-3000:]
        gate.open()

        done = job_in(job.pk, S.SUCCEEDED, timeout=30)
        submitted = time.monotonic()
        after = services.job_submit(user=user, kind="noop").job
        job_in(after.pk, S.SUCCEEDED, timeout=30)
        resumed = time.monotonic() - submitted
        assert worker.process.poll() is None and "Unrecoverable error" not in worker.log()
        assert done.attempts == 1 and len(starts(marker)) == 1
        assert results_per_job([job.pk, after.pk]) == {str(job.pk): 1, str(after.pk): 1}
        report(record_property, failed_receives=worker.log().count("sqs receive failed"), runs=len(starts(marker)),
               next_job_after_seconds=round(resumed, 1))
    finally:
        gate.close()
