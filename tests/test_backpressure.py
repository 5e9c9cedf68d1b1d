"""Back pressure: depth from the broker, the gate with its low mark, 503 with Retry-After, reads never refused."""
import dataclasses
import socket
import time

import pytest

from jobs.infra import counters
from jobs.infra.broker import BrokerUnavailable, amqp_depths, broker_list_names
from jobs.infra.counters import DRAIN_KEY
from jobs.models import Job
from jobs import services
from jobs.services import admission
from jobs.services.admission import QueueState, retry_after
from tests.support import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_limit(settings):
    settings.JOBS_QUEUE_LIMIT = 5
    settings.JOBS_QUEUE_LOW_WATERMARK = 0.6  # accept again below 3
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    settings.JOBS_RETRY_AFTER_MAX = 20
    return settings


@pytest.fixture
def submit(api, django_capture_on_commit_callbacks):
    """POST a job and run its publish at once, as a committed request would."""
    def post(payload):
        with django_capture_on_commit_callbacks(execute=True):
            return api.post("/api/jobs", payload)
    return post


def fill(submit, n, kind="noop"):
    return [submit({"kind": kind}).status_code for _ in range(n)]


def pop_messages(redis_server, queue, n):
    client = redis_server.client()
    for _ in range(n):
        assert any(client.rpop(name) for name in broker_list_names(queue))


def test_depth_counts_every_priority_list_of_every_queue(submit):
    for priority in (0, 5, 9):
        submit({"kind": "noop", "priority": priority})
    submit({"kind": "count_primes"})
    snap = admission.queue_snapshot(max_age=0)
    assert snap.queues["default"].depth == 3 and snap.queues["cpu"].depth == 1 and snap.total_depth == 4


def test_submissions_are_refused_at_the_limit_and_accepted_below_the_low_mark(
        api, submit, small_limit, redis_server):
    assert fill(submit, 5) == [202] * 5
    refused = submit({"kind": "noop", "idempotency_key": "refused-one"})
    assert refused.status_code == 503
    assert 1 <= int(refused["Retry-After"]) <= 20
    assert refused.json() == {"error": "queue_full", "queue": "*", "depth": 5, "limit": 5,
                              "retry_after": int(refused["Retry-After"])}
    assert not Job.objects.filter(idempotency_key="refused-one").exists()

    # Reads, health, the queue view, the admin login and inline kinds are never refused.
    assert api.get("/api/jobs").status_code == 200
    assert api.get("/api/queue").json()["accepting"] is False
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/admin/login/").status_code == 200
    assert api.post("/api/jobs", {"kind": "word_count", "params": {"text": "still fine"}}).status_code == 200

    pop_messages(redis_server, "default", 2)  # depth 3: below the limit, not below the low mark
    assert submit({"kind": "noop"}).status_code == 503
    pop_messages(redis_server, "default", 1)  # depth 2: below the low mark
    assert submit({"kind": "noop"}).status_code == 202
    counts = api.get("/api/queue").json()["submissions"]
    assert counts["refused_queue_full"] == 2 and counts["accepted"] == 6


def test_a_process_does_not_trust_a_reading_its_own_submissions_have_outdated(submit, settings):
    settings.JOBS_QUEUE_LIMIT = 5
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 60  # the reading taken before the first submission would stand
    assert fill(submit, 5) == [202] * 5
    refused = submit({"kind": "noop"})
    assert refused.status_code == 503 and refused.json()["depth"] == 5


def test_per_queue_limits_refuse_only_their_queue(submit, settings):
    settings.JOBS_QUEUE_LIMITS = {"cpu": 2}
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    assert fill(submit, 2, kind="count_primes") == [202, 202]
    refused = submit({"kind": "count_primes"})
    assert refused.status_code == 503 and refused.json()["queue"] == "cpu" and refused.json()["limit"] == 2
    assert submit({"kind": "noop"}).status_code == 202


def test_submission_counts_are_sent_in_batches_and_survive_a_redis_outage(redis_server, monkeypatch):
    monkeypatch.setattr(counters, "COUNTS_FLUSH_SECONDS", 60)  # no batch falls due by the clock here
    counts = counters.SubmissionCounts()
    counts.add("accepted")  # the first is sent at once
    counts.add("accepted")  # the next ones wait for the interval, or for a read
    assert redis_server.client().hget(counters.SUBMISSIONS_KEY, "accepted") == b"1"
    assert counts.totals()["accepted"] == 2
    redis_server.stop()  # it keeps nothing: the counts start again from 0
    counts.add("refused_queue_full")
    counts.flush()  # fails: kept for the next try
    redis_server.start()
    assert counts.totals() == {"refused_queue_full": 1}


def test_retry_after_follows_the_drain_rate(settings):
    settings.JOBS_RETRY_AFTER_MAX = 60
    state = QueueState("default", depth=1000, limit=1000, low_mark=800, closed=True)
    assert retry_after(dataclasses.replace(state, drain_rate=50.0)) == 4  # 200 over the low mark at 50/s
    assert retry_after(dataclasses.replace(state, drain_rate=0.5)) == 60  # bounded above
    assert retry_after(dataclasses.replace(state, drain_rate=0.0)) == 60  # nothing drains
    assert retry_after(dataclasses.replace(state, depth=801, drain_rate=1e6)) == 1  # bounded below


def test_drain_rates_are_read_per_queue_from_the_workers_counters(redis_server):
    now = int(time.time())
    client = redis_server.client()
    for second in (now - 3, now - 2, now - 1):
        client.set(DRAIN_KEY.format(queue="cpu", second=second), 10)
        client.set(DRAIN_KEY.format(queue="*", second=second), 10)
    snap = admission.queue_snapshot(max_age=0)
    assert snap.drain_rate == 3.0  # 30 claims over the 10-second window
    assert snap.queues["cpu"].drain_rate == 3.0 and snap.queues["default"].drain_rate == 0.0
    counters.record_drained("io")
    seconds = (int(time.time()), int(time.time()) - 1)
    for queue in ("io", "*"):
        assert any(int(client.get(DRAIN_KEY.format(queue=queue, second=s)) or 0) >= 1 for s in seconds)


def test_retry_after_comes_from_the_refused_queues_own_drain(api, settings, redis_server):
    """A fast-draining cpu queue says nothing of when the full default queue will take jobs again."""
    settings.JOBS_QUEUE_LIMITS = {"default": 2}
    settings.JOBS_QUEUE_LOW_WATERMARK = 0
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    settings.JOBS_RETRY_AFTER_MAX = 60
    now = int(time.time())
    for second in range(now - 10, now + 5):
        redis_server.client().set(DRAIN_KEY.format(queue="cpu", second=second), 1000, ex=300)
        redis_server.client().set(DRAIN_KEY.format(queue="*", second=second), 1000, ex=300)
    redis_server.client().rpush(broker_list_names("default")[0], b"one", b"two")  # the queue at its limit
    assert api.post("/api/jobs", {"kind": "count_primes"}).status_code == 202  # the cpu queue is not full
    refused = api.post("/api/jobs", {"kind": "noop"})
    assert refused.status_code == 503 and refused.json()["queue"] == "default"
    assert refused["Retry-After"] == "60" and refused.json()["retry_after"] == 60  # default drains nothing
    for second in range(now - 10, now + 5):
        redis_server.client().set(DRAIN_KEY.format(queue="default", second=second), 1, ex=300)
    assert api.post("/api/jobs", {"kind": "noop"})["Retry-After"] == "2"  # 2 over the low mark of 0 at 1/s


def test_broker_down_gives_503_saying_so_never_500(api, small_limit, redis_server):
    redis_server.stop()
    try:
        response = api.post("/api/jobs", {"kind": "noop"})
        assert response.status_code == 503
        assert response.json()["error"] == "broker_unavailable" and response["Retry-After"]
        assert Job.objects.count() == 0
        assert api.client.get("/healthz").status_code == 503
    finally:
        redis_server.start()


def test_a_reading_is_trusted_for_its_ttl_and_read_again_after(submit, settings, redis_server):
    settings.JOBS_QUEUE_LIMIT = 5
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 60
    assert submit({"kind": "noop"}).status_code == 202  # reads: depth 0
    client = redis_server.client()
    for _ in range(5):  # what other web processes accepted meanwhile: only a new reading can tell
        client.lpush("default", b"{}")
    assert submit({"kind": "noop"}).status_code == 202, "within the TTL the reading stands"
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    refused = submit({"kind": "noop"})
    assert refused.status_code == 503 and refused.json()["depth"] == 7


def test_a_refusal_is_not_logged_as_a_server_error(submit, small_limit, caplog):
    fill(submit, 5)
    with caplog.at_level("INFO", logger="django.request"):
        assert submit({"kind": "noop"}).status_code == 503
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_the_form_refusal_is_a_page(client, user, small_limit, submit):
    fill(submit, 5)
    client.force_login(user)
    response = client.post("/jobs/new", {"kind": "noop"})
    assert response.status_code == 503 and response["Retry-After"]
    assert b"queue is full" in response.content.lower()


def rabbitmq_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not rabbitmq_answers(), reason="no RabbitMQ answers on 127.0.0.1:5672")
def test_depth_on_rabbitmq_from_a_passive_declare(settings):
    import uuid

    from celery import current_app
    from kombu import Connection, Exchange, Producer, Queue

    url = "amqp://guest:guest@127.0.0.1:5672//"
    names = [f"depth-test-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    settings.CELERY_BROKER_URL = url
    current_app.conf.broker_url = url
    try:
        with Connection(url) as conn:
            channel = conn.channel()
            queues = [Queue(n, Exchange(n), routing_key=n, channel=channel) for n in names]
            for q in queues:
                q.declare()
            producer = Producer(channel)
            for _ in range(3):
                producer.publish({"x": 1}, exchange=names[0], routing_key=names[0])
            producer.publish({"x": 1}, exchange=names[1], routing_key=names[1])
            try:
                missing = f"depth-test-missing-{uuid.uuid4().hex[:6]}"
                depths = wait_for(lambda: (d := amqp_depths([*names, missing]))[names[0]] == 3 and d, timeout=10,
                                  message="RabbitMQ to count the messages")
                assert depths == {names[0]: 3, names[1]: 1, missing: 0}
            finally:
                for q in queues:
                    q.delete()
    finally:
        current_app.conf.broker_url = settings.REDIS_URL


def test_rabbitmq_down_is_broker_unavailable(settings):
    from celery import current_app

    from tests.support import free_port

    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    current_app.conf.broker_url = url
    try:
        with pytest.raises(BrokerUnavailable):
            amqp_depths(["default"])
    finally:
        current_app.conf.broker_url = settings.REDIS_URL


def test_a_refused_submission_is_refused_after_authentication(client, small_limit, submit):
    fill(submit, 5)
    response = client.post("/api/jobs", '{"kind": "noop"}', content_type="application/json",
                           HTTP_AUTHORIZATION="Bearer not-a-token")
    assert response.status_code == 401, "no queue state for a client without credentials"


def test_schedules_are_gated_by_the_same_service(user, small_limit, submit):
    fill(submit, 5)
    assert services.job_submit_scheduled(schedule_name="s", kind="noop", params={}, owner=None,
                                         run_id="r1") == "refused"
    with pytest.raises(services.QueueFull) as refused:
        services.job_submit(user=user, kind="noop")
    assert refused.value.queue == "*" and refused.value.retry_after >= 1
