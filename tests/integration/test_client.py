"""The HTTP client against a live server: it backs off through a full queue, keeps its key, and gives up in time."""
import json
import threading

import httpx
import pytest

from jobs.client import ApiError, DeadlineExceeded, JobsClient, main
from jobs.models import Job
from jobs.services import api_token_create
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def full_queue(settings):
    settings.JOBS_QUEUE_LIMIT = 2
    settings.JOBS_QUEUE_LOW_WATERMARK = 0.5
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    settings.JOBS_RETRY_AFTER_MAX = 1
    return settings


def recording_http(sent: list):
    def record(request: httpx.Request):
        sent.append((request.method, request.url.path, json.loads(request.content or b"null")))
    return httpx.Client(timeout=5, event_hooks={"request": [record]})


def test_client_retries_through_a_full_queue_then_succeeds_with_one_key(live_server, user, full_queue,
                                                                        worker_factory):
    token = api_token_create(user=user)[1]
    filler = JobsClient(live_server.url, token)
    for _ in range(2):
        filler.submit("noop")
    sent: list = []
    client = JobsClient(live_server.url, token, deadline=60, base_delay=0.2, max_delay=1, http=recording_http(sent))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("job", client.submit("noop")))
    thread.start()
    wait_for(lambda: len(sent) >= 2, timeout=20, message="the client to be refused and retry")
    worker_factory()  # drains the queue below the low mark
    thread.join(60)
    assert outcome["job"]["status"] in ("queued", "running", "succeeded")
    keys = {body["idempotency_key"] for _, _, body in sent}
    assert len(sent) >= 3 and len(keys) == 1
    assert Job.objects.filter(idempotency_key=keys.pop()).count() == 1


def test_client_gives_up_at_its_deadline_with_a_clear_error(live_server, user, full_queue):
    token = api_token_create(user=user)[1]
    JobsClient(live_server.url, token).submit("noop")
    JobsClient(live_server.url, token).submit("noop")
    sent: list = []
    client = JobsClient(live_server.url, token, deadline=2.5, base_delay=0.1, max_delay=0.5, http=recording_http(sent))
    with pytest.raises(DeadlineExceeded) as error:
        client.submit("noop")
    message = str(error.value)
    assert "gave up after" in message and "queue_full" in message and "503" in message
    assert len({body["idempotency_key"] for _, _, body in sent}) == 1 and len(sent) >= 2
    assert Job.objects.count() == 2


def test_client_retries_connection_errors_until_the_deadline():
    from tests.support import free_port

    client = JobsClient(f"http://127.0.0.1:{free_port()}", "t", deadline=1.0, base_delay=0.05, max_delay=0.2)
    with pytest.raises(DeadlineExceeded, match="connection error"):
        client.get("00000000-0000-0000-0000-000000000000")
    assert client.tries >= 2


def test_client_does_not_retry_client_errors(live_server, user):
    client = JobsClient(live_server.url, api_token_create(user=user)[1])
    with pytest.raises(ApiError) as error:
        client.submit("no_such_kind")
    assert error.value.status == 422 and client.tries == 1


def test_cli_submits_waits_and_shows_status(live_server, user, live_worker, capsys):
    token = api_token_create(user=user)[1]
    base = ["--url", live_server.url, "--token", token]
    assert main([*base, "submit", "count_primes", "--param", "limit=1000", "--wait"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "succeeded" and job["result"]["primes"] == 168
    assert main([*base, "status", job["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job["id"]
    assert main([*base, "cancel", job["id"]]) == 2
    assert "409" in capsys.readouterr().err


def test_cli_wait_tells_progress_as_it_goes_and_a_failures_error(live_server, user, live_worker, capsys):
    token = api_token_create(user=user)[1]
    base = ["--url", live_server.url, "--token", token]
    assert main([*base, "submit", "steps", "-p", "steps=4", "-p", "step_seconds=0.3", "--wait"]) == 0
    out, err = capsys.readouterr()
    job = json.loads(out)
    lines = err.splitlines()
    assert lines[0].startswith(f"job {job['id']} ")  # the id first, as soon as it is known
    assert any("running" in line and " of 4 " in line for line in lines), err  # progress as it goes
    assert lines[-1] == f"job {job['id']} succeeded 4 of 4 (100%) - step 4 of 4"

    assert main([*base, "submit", "steps", "-p", "steps=3", "-p", "step_seconds=0", "-p", "fail_at_step=2",
                 "--wait"]) == 1
    out, err = capsys.readouterr()
    failed = json.loads(out)
    assert failed["status"] == "failed" and failed["result"] is None
    last = err.splitlines()[-1]
    assert last == (f"job {failed['id']} failed (attempt 3 of 3) at 1 of 3 (33%) - step 1 of 3: "
                    f"StepFailed: told to fail at step 2 (attempt 3)"), err
    assert "exc_type" not in err + out
