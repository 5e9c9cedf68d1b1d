"""Runs over their time limits, and messages no worker can decode: each ends cleanly and the worker keeps going."""
import base64
import json
import uuid

import pytest
from django_celery_results.models import TaskResult

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.models import JobError
from tests.faults.conftest import S, all_in, job_in, report, results_per_job, submit_marked
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_run_over_its_soft_limit_fails_timed_out_and_the_worker_lives(worker_factory, user, tmp_path,
                                                                         record_property):
    worker = worker_factory(concurrency=1)
    pool_before = worker.pool_pids()
    [(job, _)] = submit_marked(user, "test_soft_limit", tmp_path, seconds=5)

    failed = job_in(job.pk, S.FAILED, timeout=20)
    assert failed.error == "timed out after 1s"
    assert failed.attempts == 1, "a timeout is not retried"
    [error] = JobError.objects.filter(job=job)
    assert "SoftTimeLimitExceeded" in error.traceback
    assert TaskResult.objects.get(task_id=str(job.pk)).status == "FAILURE"

    after = services.job_submit(user=user, kind="noop").job
    job_in(after.pk, S.SUCCEEDED)
    assert worker.process.poll() is None and worker.pool_pids() == pool_before, "the same process ran on"
    report(record_property, pool_processes_replaced=0, attempts=failed.attempts)


def test_a_run_over_its_hard_limit_is_killed_and_fails_and_the_worker_lives(worker_factory, user, tmp_path):
    worker = worker_factory(concurrency=1)
    [(job, _)] = submit_marked(user, "test_hard_limit", tmp_path, seconds=30)

    failed = job_in(job.pk, S.FAILED, timeout=30)
    assert "timed out after 2" in failed.error and "hard time limit" in failed.error
    assert failed.attempts == 1
    assert TaskResult.objects.get(task_id=str(job.pk)).status == "FAILURE"
    after = services.job_submit(user=user, kind="noop").job
    job_in(after.pk, S.SUCCEEDED)
    assert worker.process.poll() is None


def envelope(*, task: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A message in kombu's Redis format, as a publisher that got something wrong would send it."""
    task_id = str(uuid.uuid4())
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None]},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": "default"},
                       "delivery_tag": str(uuid.uuid4())},
    }).encode()


def test_messages_the_worker_cannot_decode_are_rejected_and_logged_and_the_queue_flows(
        worker_factory, user, redis_server, record_property):
    job = services.job_submit(user=user, kind="noop").job
    good_body = json.dumps([[str(job.pk), {}], {}, {}]).encode()
    bad = [
        envelope(task="jobs.noop", body=b"\x80\x04\x95 not for us", content_type="application/x-python-serialize"),
        envelope(task="jobs.noop", body=b"{not json", content_type="application/json"),
        envelope(task="jobs.no_such_kind", body=good_body),
        envelope(task="jobs.noop", body=good_body, content_type="application/x-yaml"),
    ]
    client = redis_server.client()
    # Pushed where a worker reads first (the priority-0 list), ahead of the good jobs.
    client.rpush(broker_list_names("default")[0], *bad)
    after = [services.job_submit(user=user, kind="noop").job.pk for _ in range(5)]

    worker = worker_factory(concurrency=2)
    all_in([job.pk, *after], S.SUCCEEDED, timeout=30)
    discarded = "The message has been ignored and discarded."
    wait_for(lambda: worker.log().count(discarded) >= 3 and "Can't decode message body" in worker.log(),
             timeout=10, message="the undecodable messages to be logged")
    log = worker.log()
    assert "Refusing to deserialize untrusted content of type pickle (application/x-python-serialize)" in log
    assert "Refusing to deserialize untrusted content of type yaml (application/x-yaml)" in log
    assert "Can't decode message body: DecodeError" in log and "b'{not json'" in log
    assert "Received unregistered task of type 'jobs.no_such_kind'" in log
    assert sum(client.llen(name) for name in broker_list_names("default")) == 0
    # Nothing is left held to be redelivered (the last run's acknowledgement follows its return).
    wait_for(lambda: client.hlen("unacked") == 0, timeout=10, message="every message to be acknowledged")
    assert results_per_job([job.pk, *after]) == {str(i): 1 for i in [job.pk, *after]}
    assert worker.process.poll() is None
    report(record_property, bad_messages=len(bad),
           rejected_logged=log.count(discarded) + log.count("Can't decode message body"),
           good_jobs_succeeded=1 + len(after))
