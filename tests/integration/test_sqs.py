"""Amazon SQS as the broker, against moto's SQS emulator on loopback (not AWS): jobs run on a real worker, the gate
reads SQS's depth, health and /api/queue name the broker, and recovery republishes a lost message."""
import time
from datetime import timedelta

import pytest
from celery import current_app
from django.utils import timezone
from django_celery_results.models import TaskResult

from jobs import selectors, services
from jobs.infra import broker
from jobs.models import Job
from jobs.services import admission
from tests.support import SqsServer, forget_broker_connections, free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

S = Job.Status


def waiting(sqs, queue: str, attribute: str = "ApproximateNumberOfMessages") -> int:
    """Messages waiting in one of the test's queues (or in flight), as the emulator counts them, read from outside
    kombu."""
    attributes = sqs.server.client().get_queue_attributes(QueueUrl=sqs.queue_url(queue), AttributeNames=[attribute])
    return int(attributes["Attributes"][attribute])


def test_jobs_run_on_a_worker_consuming_sqs_with_long_polling(use_sqs, worker_factory, user):
    sqs = use_sqs()  # the settings' long poll: 20 s
    worker = worker_factory(queues="default,cpu,io,platform", env=sqs.worker_env())
    banner = worker.log()
    assert f"jobs.infra.sqs:Transport://:**@127.0.0.1:{sqs.server.port}" in banner
    assert SqsServer.ENV["AWS_SECRET_ACCESS_KEY"] not in banner, "no credential in the worker's log"
    queues = {url.rsplit("/", 1)[1] for url in sqs.server.client().list_queues(
        QueueNamePrefix=sqs.prefix).get("QueueUrls", [])}
    assert queues == {f"{sqs.prefix}{q}" for q in ("default", "cpu", "io", "platform")}

    time.sleep(2)  # the worker's receives are waiting on the emulator now: a message must end the wait
    started = time.monotonic()
    jobs = [services.job_submit(user=user, kind="count_primes", params={"limit": 10_000}).job,
            services.job_submit(user=user, kind="noop").job,
            services.job_submit(user=user, kind="steps", params={"steps": 2}).job]
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status=S.SUCCEEDED).count() == 3, timeout=30,
             message="the three jobs to succeed over SQS")
    assert time.monotonic() - started < 10, "a long poll returns when a message comes, not at its end"
    done = Job.objects.get(pk=jobs[0].pk)
    assert done.attempts == 1 and selectors.job_result_value(job=done)["primes"] == 1229
    assert all(waiting(sqs, q) == 0 for q in ("default", "cpu"))
    wait_for(lambda: all(waiting(sqs, q, "ApproximateNumberOfMessagesNotVisible") == 0 for q in ("default", "cpu")),
             timeout=10, message="each message to be deleted once its job ran (acknowledged)")


@pytest.fixture
def small_limit(settings):
    settings.JOBS_QUEUE_LIMIT = 5
    settings.JOBS_QUEUE_LOW_WATERMARK = 0.6  # accept again below 3
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    return settings


def test_the_gate_reads_the_depth_of_the_sqs_queues(use_sqs, api, small_limit):
    sqs = use_sqs()
    assert [api.post("/api/jobs", {"kind": "noop"}).status_code for _ in range(3)] == [202] * 3
    assert api.post("/api/jobs", {"kind": "count_primes"}).status_code == 202
    assert waiting(sqs, "default") == 3 and waiting(sqs, "cpu") == 1
    snap = admission.queue_snapshot(max_age=0)
    assert {q: s.depth for q, s in snap.queues.items()} == {"default": 3, "cpu": 1, "io": 0}
    assert snap.total_depth == 4

    assert api.post("/api/jobs", {"kind": "noop"}).status_code == 202
    refused = api.post("/api/jobs", {"kind": "noop"})
    assert refused.status_code == 503 and refused.json()["error"] == "queue_full" and refused.json()["depth"] == 5
    queue = api.get("/api/queue").json()
    assert queue["broker"] == "sqs" and queue["accepting"] is False and queue["total_depth"] == 5
    health = api.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"database": "ok", "broker": "ok", "broker_kind": "sqs"}

    # Received and not yet deleted (in flight: held by a worker) is no longer waiting, as an unacknowledged
    # message on Redis is not: the depth falls below the low mark and submissions are accepted again.
    received = sqs.server.client().receive_message(QueueUrl=sqs.queue_url("default"), MaxNumberOfMessages=3,
                                                   VisibilityTimeout=60)
    assert len(received["Messages"]) == 3
    assert admission.queue_snapshot(max_age=0).total_depth == 2
    assert api.post("/api/jobs", {"kind": "noop"}).status_code == 202


def test_an_sqs_endpoint_that_does_not_answer_is_broker_unavailable(use_sqs, api, settings):
    use_sqs()
    url = f"sqs://127.0.0.1:{free_port()}"
    settings.CELERY_BROKER_URL = url
    current_app.conf.broker_url = url
    forget_broker_connections()
    admission.reset()

    started = time.monotonic()
    refused = api.post("/api/jobs", {"kind": "noop"})
    assert refused.status_code == 503 and refused.json()["error"] == "broker_unavailable"
    assert time.monotonic() - started < 3, "botocore's three quick attempts, not kombu's retries for seconds"
    assert Job.objects.count() == 0
    health = api.client.get("/healthz")
    assert health.status_code == 503 and health.json()["broker"].startswith("down")
    assert health.json()["broker_kind"] == "sqs"
    assert broker.answers() is False


def test_a_job_whose_sqs_message_was_deleted_is_republished_and_completes(use_sqs, user, worker_factory):
    sqs = use_sqs()
    job = services.job_submit(user=user, kind="count_primes", params={"limit": 10_000}).job
    assert waiting(sqs, "cpu") == 1
    # SQS lists no message ids: a queue with a message waiting may hold the job's, so recovery leaves it.
    assert services.recover_jobs(stale_after=0)["republished"] == 0

    sqs.server.client().purge_queue(QueueUrl=sqs.queue_url("cpu"))
    assert waiting(sqs, "cpu") == 0
    assert services.recover_jobs(stale_after=60)["republished"] == 0, "published just now: not stale yet"
    assert services.recover_jobs(stale_after=0)["republished"] == 1
    assert waiting(sqs, "cpu") == 1

    worker_factory(queues="cpu", env=sqs.worker_env())
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status=S.SUCCEEDED).first(), timeout=60,
                    message="the republished job to succeed")
    assert done.attempts == 1


def test_a_job_waiting_behind_a_backlog_longer_than_the_visibility_timeout_is_copied_once(use_sqs, user,
                                                                                         worker_factory):
    sqs = use_sqs(visibility_timeout=60)
    jobs = [services.job_submit(user=user, kind="noop").job for _ in range(3)]
    assert services.recover_jobs(stale_after=0)["republished"] == 0
    # The first job has waited past the visibility timeout: its message may be gone (or never sent), and
    # SQS cannot say, so it gets another (the queue's others have not waited that long).
    Job.objects.filter(pk=jobs[0].pk).update(published_at=timezone.now() - timedelta(seconds=61))
    assert services.recover_jobs(stale_after=0)["republished"] == 1
    assert services.recover_jobs(stale_after=0)["republished"] == 0, "at most once per visibility timeout"
    assert waiting(sqs, "default") == 4

    worker = worker_factory(queues="default", env=sqs.worker_env())
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status=S.SUCCEEDED).count() == 3, timeout=60,
             message="the three jobs to succeed")
    wait_for(lambda: "dropped message for a job that is not claimable" in worker.log(), timeout=20,
             message="the copy to be dropped")
    assert set(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("attempts", flat=True)) == {1}
    assert TaskResult.objects.filter(task_id__in=[str(j.pk) for j in jobs]).count() == 3
