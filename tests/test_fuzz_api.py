"""Bad input: the API fuzzed from its own OpenAPI schema, and the hostile bodies a fuzzer rarely builds."""
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings

from jobs.models import Job

pytestmark = pytest.mark.django_db

def load_schema():
    from project.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/openapi.json", application)


schema = load_schema()
# Query parameters the API does not know are ignored, as HTTP APIs commonly do (the schema lists the known
# ones); everything else schemathesis generates, negative data included, is in play.
schema.config.generation.update(allow_extra_parameters=False)
FUZZ = hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture
def connection_kept_across_requests():
    """As Django's test client does: requests leave the connection open, so they see the test's transaction."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


_token = {}


@schema.auth(refresh_interval=None)
class BearerToken:
    """The test's user's token, as schemathesis's own auth: its checks (ignored_auth) then know the valid
    credentials and probe without them and with wrong ones."""

    def get(self, case, context):
        return _token.get("value")

    def set(self, case, data, context):
        if data is not None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def bearer(user):
    from jobs.services import api_token_create

    _token["value"] = api_token_create(user=user)[1]
    yield
    _token.clear()


# Every check schemathesis has (no 5xx, statuses and bodies as declared, valid input accepted, invalid
# input refused, ...), with the authenticated user's token.
@schema.parametrize()
@FUZZ
def test_every_operation_answers_within_its_schema_and_never_5xx(case, bearer, connection_kept_across_requests):
    case.call_and_validate()


@schema.parametrize()
@FUZZ
def test_without_credentials_every_operation_answers_401_as_declared(case, connection_kept_across_requests):
    response = case.call_and_validate(headers={"Authorization": "Bearer not-a-token"})
    if case.method.upper() == case.operation.method.upper():  # else an unexpected method: 405, checked above
        assert response.status_code == 401, response.text[:300]
        assert response.headers["www-authenticate"] == ['Bearer realm="api"']


@pytest.fixture
def operator_bearer(staff_user):
    """A staff operator's token (every operator's permission, through the Operators group)."""
    from django.contrib.auth.models import Group

    from jobs import services

    services.operator_groups_ensure()
    Group.objects.get(name="Operators").user_set.add(staff_user)
    _token["value"] = services.api_token_create(user=staff_user)[1]
    yield
    _token.clear()


# The operators' actions again, by someone allowed to take them: past the permission check, into the filters.
@schema.include(tag="operations").parametrize()
@FUZZ
def test_operators_actions_answer_within_their_schema_and_never_5xx(case, operator_bearer,
                                                                    connection_kept_across_requests):
    case.call_and_validate()


def test_stateful_sequences_follow_the_links(bearer, connection_kept_across_requests):
    """Submit, then get, cancel and retry the job the submission returned, as the schema's links say, in
    every order hypothesis finds: every response within the schema, none a 5xx."""

    cancelled = []

    class Workflow(schema.as_state_machine()):
        def setup(self):
            # Each scenario starts from the same state, so that replaying one (shrinking) meets the same
            # answers: an idempotency key drawn again would otherwise meet the job a former scenario made.
            Job.objects.all().delete()

        def after_call(self, response, case):
            if case.operation.definition.raw.get("operationId") == "cancel_job" and response.status_code == 200:
                cancelled.append(response.json()["id"])

    Workflow.run(settings=hypothesis_settings(max_examples=30, stateful_step_count=6, deadline=None,
                                              suppress_health_check=list(HealthCheck), derandomize=True))
    # Cancelling needs a job id, which only the submit -> cancel link provides (in any scenario: each one
    # starts afresh, so the database shows the last one only).
    assert cancelled


# --- What a schema-driven fuzzer seldom sends -------------------------------------------------


def nested(depth: int, leaf: str = "1", *, key: str = "a") -> str:
    return f'{{"{key}": ' * depth + leaf + "}" * depth


@pytest.mark.parametrize("depth", [50, 900, 5_000, 30_000])
@pytest.mark.parametrize("container", ["object", "array"])
def test_deeply_nested_params_are_refused_cleanly(api, depth, container):
    inner = nested(depth) if container == "object" else "[" * depth + "]" * depth
    response = api.post("/api/jobs", raw=f'{{"kind": "noop", "params": {{"deep": {inner}}}}}')
    assert response.status_code in (400, 422), response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    assert Job.objects.count() == 0


@pytest.mark.parametrize("field, value, loc", [
    ("kind", "k" * 200_000, ["body", "payload", "kind"]),
    ("idempotency_key", "k" * 200_000, ["body", "payload", "idempotency_key"]),
    ("params", {"text": "word " * 50_000}, ["body", "params", "text"]),
    ("params", {"x" * 100_000: 1}, ["body", "params", "x" * 100_000]),
])
def test_huge_strings_are_refused_naming_the_field(api, settings, field, value, loc):
    settings.JOBS_MAX_BODY_BYTES = 10_000_000
    payload = {"kind": "word_count", "params": {"text": "a"}, field: value}
    response = api.post("/api/jobs", payload)
    assert response.status_code == 422, response.content[:300]
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("raw", [
    '{"kind": "noop", "priority": NaN}',
    '{"kind": "noop", "priority": -Infinity}',
    '{"kind": "noop", "params": {"a": {"b": [1, Infinity]}}}',
    '{"kind": "count_primes", "params": {"limit": NaN}}',
])
def test_nan_and_infinity_anywhere_are_refused(api, raw):
    response = api.post("/api/jobs", raw=raw)
    assert response.status_code == 400 and "parse" in response.json()["detail"].lower()
    assert Job.objects.count() == 0


@pytest.mark.parametrize("payload, loc", [
    ({"kind": "noop", "priority": 1e400}, ["body", "payload", "priority"]),
    ({"kind": "noop", "priority": 10 ** 400}, ["body", "payload", "priority"]),
    ({"kind": "count_primes", "params": {"limit": 10 ** 400}}, ["body", "params", "limit"]),
    ({"kind": "steps", "params": {"steps": 1, "step_seconds": 1e400}}, ["body", "params", "step_seconds"]),
])
def test_numbers_beyond_any_column_are_refused(api, payload, loc):
    body = json.dumps(payload).replace("Infinity", "1e400")
    response = api.post("/api/jobs", raw=body)
    assert response.status_code in (400, 422), response.content[:300]
    if response.status_code == 422:
        assert loc in [e["loc"] for e in response.json()["detail"]]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("raw, loc", [
    ('{"kind": "\\ud800"}', ["body", "payload", "kind"]),
    ('{"kind": "noop", "idempotency_key": "a\\udfffb"}', ["body", "payload", "idempotency_key"]),
    ('{"kind": "word_count", "params": {"text": "a\\ud800b"}}', ["body", "params", "text"]),
    ('{"kind": "noop", "params": {"\\ud800": 1}}', ["body", "params"]),
])
def test_lone_surrogates_which_no_database_stores_are_refused(api, raw, loc):
    response = api.post("/api/jobs", raw=raw)
    assert response.status_code == 422, response.content[:300]
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert Job.objects.count() == 0


UNICODE = "Zoë 🚀 東京 ℵ \u202e\u200b עברית"


def test_unicode_in_every_field_is_kept_or_named(api):
    kept = api.post("/api/jobs", {"kind": "word_count", "params": {"text": UNICODE}, "idempotency_key": UNICODE})
    assert kept.status_code == 200, kept.content
    assert kept.json()["params"]["text"] == UNICODE and kept.json()["idempotency_key"] == UNICODE
    assert api.get(f"/api/jobs/{kept.json()['id']}").json()["idempotency_key"] == UNICODE

    unknown_kind = api.post("/api/jobs", {"kind": UNICODE})
    assert unknown_kind.status_code == 422 and unknown_kind.json()["detail"][0]["loc"] == ["body", "kind"]
    unknown_param = api.post("/api/jobs", {"kind": "noop", "params": {UNICODE: UNICODE}})
    assert unknown_param.status_code == 422
    assert unknown_param.json()["detail"][0]["loc"] == ["body", "params", UNICODE]
    bad_time = api.post("/api/jobs", {"kind": "noop", "run_at": UNICODE})
    assert bad_time.status_code == 422 and bad_time.json()["detail"][0]["loc"] == ["body", "payload", "run_at"]
    assert api.get("/api/jobs", kind=UNICODE).json() == {"items": [], "count": 0}
    assert api.get("/api/jobs", status=UNICODE).status_code == 422
    assert api.get("/api/jobs/" + "東京").status_code == 422
    assert api.get("/api/stats", window=UNICODE).status_code == 422
    assert Job.objects.count() == 1


@pytest.mark.parametrize("query", [
    {"limit": 10 ** 30}, {"offset": 10 ** 30}, {"limit": 2 ** 63}, {"offset": 2 ** 63 - 1}, {"limit": "1e3"},
])
def test_pagination_numbers_beyond_any_column_are_refused(api, query):
    response = api.get("/api/jobs", **query)
    assert response.status_code == 422, response.content[:300]
    assert response.json()["detail"][0]["loc"][0] == "query"
