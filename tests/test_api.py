"""The JSON API: submit, list, read, cancel, retry, kinds; every bad input is a named 4xx with nothing written."""
import json

import pytest
from django_celery_results.models import TaskResult

from jobs.models import Job
from jobs.infra.broker import broker_list_names
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db


def queued_message_ids(redis_server, queue):
    ids = []
    for name in broker_list_names(queue):
        for raw in redis_server.client().lrange(name, 0, -1):
            ids.append(json.loads(raw)["headers"]["id"])
    return ids


def test_submit_records_the_job_and_publishes_its_message(api, user, redis_server, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/jobs", {"kind": "count_primes", "params": {"limit": 1000}, "priority": 7})
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["kind"] == "count_primes" and body["priority"] == 7
    assert body["owner"] == "alice"
    job = Job.objects.get(pk=body["id"])
    assert job.params == {"limit": 1000} and job.queue == "cpu"
    assert queued_message_ids(redis_server, "cpu") == [body["id"]]


def test_priority_maps_onto_redis_priority_lists(api, redis_server, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        urgent = api.post("/api/jobs", {"kind": "noop", "priority": 9}).json()["id"]
        low = api.post("/api/jobs", {"kind": "noop", "priority": 0}).json()["id"]
    client = redis_server.client()
    # kombu serves the list named after the queue (priority 0) first, ":9" last.
    assert json.loads(client.lrange("default", 0, -1)[0])["headers"]["id"] == urgent
    assert json.loads(client.lrange("default:9", 0, -1)[0])["headers"]["id"] == low


def test_params_defaults_are_filled_in(api):
    body = api.post("/api/jobs", {"kind": "count_primes"}).json()
    assert body["params"] == {"limit": 1_000_000}


def test_same_idempotency_key_returns_the_same_job(api, redis_server, django_capture_on_commit_callbacks):
    payload = {"kind": "noop", "idempotency_key": "order-42"}
    with django_capture_on_commit_callbacks(execute=True):
        first = api.post("/api/jobs", payload)
        second = api.post("/api/jobs", payload)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert Job.objects.count() == 1
    assert queued_message_ids(redis_server, "default") == [first.json()["id"]]


def test_the_same_idempotency_key_with_other_params_is_a_conflict(api):
    first = api.post("/api/jobs", {"kind": "count_primes", "params": {"limit": 100}, "idempotency_key": "k1"})
    again = api.post("/api/jobs", {"kind": "count_primes", "params": {"limit": 100}, "idempotency_key": "k1"})
    other = api.post("/api/jobs", {"kind": "count_primes", "params": {"limit": 200}, "idempotency_key": "k1"})
    kind = api.post("/api/jobs", {"kind": "noop", "idempotency_key": "k1"})
    assert first.status_code == 202 and again.status_code == 200
    assert other.status_code == 409 and other.json()["mismatch"] == ["params"]
    assert other.json()["job"] == first.json()["id"] and other.json()["error"] == "idempotency_key_reused"
    assert kind.status_code == 409 and kind.json()["mismatch"] == ["kind", "params"]
    assert Job.objects.count() == 1


def test_idempotency_keys_are_per_user(api_for, user, other_user):
    a = api_for(user).post("/api/jobs", {"kind": "noop", "idempotency_key": "k"}).json()["id"]
    b = api_for(other_user).post("/api/jobs", {"kind": "noop", "idempotency_key": "k"}).json()["id"]
    assert a != b


def test_inline_kind_answers_200_with_its_result_and_is_recorded(api):
    response = api.post("/api/jobs", {"kind": "word_count", "params": {"text": "the cat saw the dog"}})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["result"]["words"] == 5 and body["result"]["top_words"][0] == {"word": "the", "count": 2}
    assert TaskResult.objects.get(task_id=body["id"]).status == "SUCCESS"


def test_run_at_in_the_future_is_kept_in_the_database_not_published(api, redis_server):
    response = api.post("/api/jobs", {"kind": "noop", "run_at": "2999-01-01T00:00:00Z"})
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["id"])
    assert job.published_at is None and job.status == "queued"
    assert queued_message_ids(redis_server, "default") == []


@pytest.mark.parametrize(
    "payload, loc",
    [
        ({"kind": "no_such_kind"}, ["body", "kind"]),
        ({"kind": "count_primes", "params": {"limit": "many"}}, ["body", "params", "limit"]),
        ({"kind": "count_primes", "params": {"limit": 1}}, ["body", "params", "limit"]),
        ({"kind": "count_primes", "params": {"limti": 10}}, ["body", "params", "limti"]),
        ({"kind": "word_count", "params": {}}, ["body", "params", "text"]),
        ({"params": {}}, ["body", "payload", "kind"]),
        ({"kind": "noop", "priority": 10}, ["body", "payload", "priority"]),
        ({"kind": "noop", "priority": "high"}, ["body", "payload", "priority"]),
        ({"kind": "noop", "run_at": "yesterday"}, ["body", "payload", "run_at"]),
        ({"kind": "noop", "idempotency_key": ""}, ["body", "payload", "idempotency_key"]),
        ({"kind": "noop", "idempotency_key": "x" * 201}, ["body", "payload", "idempotency_key"]),
        ({"kind": "noop", "unexpected": 1}, ["body", "payload", "unexpected"]),
        ({"kind": "noop", "params": []}, ["body", "payload", "params"]),
        ({"kind": "word_count", "params": {"text": "a\u0000b"}}, ["body", "payload", "params"]),
    ],
)
def test_invalid_submissions_are_422_naming_the_field(api, payload, loc):
    response = api.post("/api/jobs", payload)
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["error"] == "validation_error"
    assert loc in [e["loc"] for e in body["detail"]], body
    assert Job.objects.count() == 0


@pytest.mark.parametrize("raw", [
    '{"kind": "steps", "params": {"step_seconds": NaN}}',
    '{"kind": "steps", "params": {"step_seconds": Infinity}}',
    '{"kind": "noop"',
    "not json at all",
    "[" * 100_000 + "]" * 100_000,
    b"\xff\xfe{}",
])
def test_malformed_bodies_are_400(api, raw, settings):
    settings.JOBS_MAX_BODY_BYTES = 10_000_000
    response = api.post("/api/jobs", raw=raw)
    assert response.status_code == 400, response.content
    assert "parse" in response.json()["detail"].lower()
    assert Job.objects.count() == 0


def test_a_body_over_the_limit_is_413(api, settings):
    settings.JOBS_MAX_BODY_BYTES = 1000
    response = api.post("/api/jobs", {"kind": "word_count", "params": {"text": "x" * 2000}})
    assert response.status_code == 413
    assert "1000" in response.json()["detail"]
    assert Job.objects.count() == 0


def test_unicode_everywhere_is_kept(api):
    text = "Zoë 🚀 naïve — 東京 ℵ"
    response = api.post("/api/jobs", {"kind": "word_count", "params": {"text": text}, "idempotency_key": "ключ-🚀"})
    assert response.status_code == 200
    assert response.json()["params"]["text"] == text
    assert response.json()["idempotency_key"] == "ключ-🚀"


def test_requests_without_a_valid_token_are_401(api_for, user):
    from jobs.services import api_token_create, api_token_revoke

    anonymous = api_for(None)
    assert anonymous.get("/api/jobs").status_code == 401
    assert anonymous.post("/api/jobs", {"kind": "noop"}).status_code == 401
    token, plain = api_token_create(user=user)
    api_token_revoke(token=token)
    revoked = ApiClient(anonymous.client, plain)
    assert revoked.get("/api/jobs").status_code == 401
    assert ApiClient(anonymous.client, plain + "x").get("/api/jobs").status_code == 401
    assert Job.objects.count() == 0


def test_tokens_are_stored_hashed(user):
    from jobs.services import api_token_create

    token, plain = api_token_create(user=user)
    assert plain not in token.key_hash and len(token.key_hash) == 64
    assert plain.startswith(token.prefix)


def test_users_see_and_act_on_their_own_jobs_only(api_for, user, other_user, staff_user):
    alice, bob, staff = api_for(user), api_for(other_user), api_for(staff_user)
    job_id = alice.post("/api/jobs", {"kind": "noop"}).json()["id"]
    for response in (bob.get(f"/api/jobs/{job_id}"), bob.post(f"/api/jobs/{job_id}/cancel"),
                     bob.post(f"/api/jobs/{job_id}/retry")):
        assert response.status_code == 404
    assert bob.get("/api/jobs").json()["items"] == []
    assert Job.objects.get(pk=job_id).status == "queued"
    assert staff.get(f"/api/jobs/{job_id}").status_code == 200
    assert [j["id"] for j in staff.get("/api/jobs").json()["items"]] == [job_id]


def test_list_filters_and_paginates_newest_first(api):
    ids = [api.post("/api/jobs", {"kind": "noop"}).json()["id"] for _ in range(3)]
    api.post("/api/jobs", {"kind": "word_count", "params": {"text": "hi"}})
    page = api.get("/api/jobs", kind="noop", limit=2).json()
    assert page["count"] == 3 and [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert [j["kind"] for j in api.get("/api/jobs", status="succeeded").json()["items"]] == ["word_count"]
    assert api.get("/api/jobs", status="bogus").status_code == 422
    assert api.get("/api/jobs", limit=-1).status_code == 422


def test_unknown_or_malformed_job_ids_are_404_or_422(api):
    assert api.get("/api/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/jobs/not-a-uuid").status_code == 422


def test_cancel_a_queued_job_and_retry_it(api, redis_server, django_capture_on_commit_callbacks):
    job_id = api.post("/api/jobs", {"kind": "noop"}).json()["id"]
    cancelled = api.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    with django_capture_on_commit_callbacks(execute=True):
        retried = api.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert retried.json()["attempt_limit"] == 1 + Job.objects.get(pk=job_id).attempts
    assert queued_message_ids(redis_server, "default")[-1] == job_id
    assert api.post(f"/api/jobs/{job_id}/retry").status_code == 409


def test_kinds_list_their_parameter_schemas(api):
    kinds = {k["name"]: k for k in api.get("/api/kinds").json()}
    assert {"count_primes", "steps", "fan_out", "word_count", "noop"} <= set(kinds)
    assert kinds["word_count"]["inline"] is True
    assert kinds["count_primes"]["params_schema"]["properties"]["limit"]["type"] == "integer"


def test_openapi_and_docs_are_served(client):
    schema = client.get("/api/openapi.json").json()
    assert "/api/jobs" in schema["paths"] and "/api/jobs/{job_id}/cancel" in schema["paths"]
    assert client.get("/api/docs").status_code == 200


def test_healthz_reports_each_part(client, redis_server):
    assert client.get("/healthz").json() == {"database": "ok", "broker": "ok", "broker_kind": "redis"}
    redis_server.stop()
    try:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["database"] == "ok" and response.json()["broker"].startswith("down")
    finally:
        redis_server.start()


def test_a_method_the_path_does_not_take_is_a_json_405(api):
    response = api.client.delete("/api/jobs", **api.headers)
    assert response.status_code == 405 and response["Content-Type"] == "application/json"
    assert response.json()["error"] == "method_not_allowed" and "GET" in response["Allow"]


def test_every_error_is_declared_by_reference_and_503_with_its_bodies_and_retry_after(client):
    schema = client.get("/api/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if not code.startswith(("4", "5")):
                    continue
                body = response["content"]["application/json"]["schema"]
                refs = [option["$ref"] for option in body.get("oneOf", [body])]
                assert all(ref.removeprefix("#/components/schemas/") in components for ref in refs), (path, code)
            unavailable = operation["responses"]["503"]
            assert "Retry-After" in unavailable["headers"], (path, method)
            assert {o["$ref"].rsplit("/", 1)[1] for o in unavailable["content"]["application/json"]["schema"]["oneOf"]} \
                == {"QueueFullOut", "UnavailableOut"}


def test_the_docs_page_loads_its_assets_from_this_site(client):
    page = client.get("/api/docs").content.decode()
    assert "cdn." not in page and "jsdelivr" not in page
    assert "/static/ninja/swagger-ui-bundle.js" in page


@pytest.mark.parametrize("run_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_that_leaves_the_calendar_in_utc_is_422_not_500(api, run_at):
    response = api.post("/api/jobs", {"kind": "noop", "run_at": run_at})
    assert response.status_code == 422, response.content
    assert ["body", "run_at"] in [e["loc"] for e in response.json()["detail"]] or \
        ["body", "payload", "run_at"] in [e["loc"] for e in response.json()["detail"]]
    assert not Job.objects.exists()
