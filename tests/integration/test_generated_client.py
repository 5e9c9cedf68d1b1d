"""A client that nobody here wrote: openapi-python-client generates one from the live schema, and it submits,
polls and lists jobs, and meets 401, 409, 422 and 503 as the typed responses the schema declares."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobs.services import api_token_create
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def generated(live_server, tmp_path, monkeypatch):
    """The package generated from /api/openapi.json as the live server serves it."""
    schema = httpx.get(f"{live_server.url}/api/openapi.json", timeout=10)
    assert schema.status_code == 200
    (tmp_path / "openapi.json").write_text(schema.text)
    (tmp_path / "config.json").write_text(json.dumps({"package_name_override": "platform_client", "post_hooks": []}))
    generator = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--config", "config.json", "--meta", "none",
         "--output-path", "platform_client"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every error response must survive generation (they were dropped as duplicates when declared inline).
    assert "Warning" not in done.stdout, done.stdout
    monkeypatch.syspath_prepend(str(tmp_path))
    package = importlib.import_module("platform_client")
    yield package
    for name in [m for m in sys.modules if m == "platform_client" or m.startswith("platform_client.")]:
        del sys.modules[name]


def _module(package, path):
    return importlib.import_module(f"{package.__name__}.{path}")


def test_generated_client_submits_polls_lists_and_meets_typed_errors(generated, live_server, user, settings,
                                                                     worker_factory):
    api = _module(generated, "api.jobs")
    models = _module(generated, "models")
    submit = _module(generated, "api.jobs.submit_job")
    get_job = _module(generated, "api.jobs.get_job")
    list_jobs = _module(generated, "api.jobs.list_jobs")
    assert api is not None
    token = api_token_create(user=user)[1]
    client = generated.AuthenticatedClient(base_url=live_server.url, token=token, raise_on_unexpected_status=True)

    # Typed parameters: the kind's own params model, picked by the discriminator.
    accepted = submit.sync_detailed(client=client, body=models.SubmitCountPrimes(
        kind="count_primes", params=models.PrimesParams(limit=1000), idempotency_key="generated-1"))
    assert accepted.status_code == 202
    job = accepted.parsed
    assert isinstance(job, models.JobOut) and job.kind == "count_primes" and job.params["limit"] == 1000

    worker = worker_factory()
    wait_for(lambda: get_job.sync(client=client, job_id=job.id).status == "succeeded", timeout=60,
             message="the job to succeed, polled through the generated client")
    done = get_job.sync(client=client, job_id=job.id)
    assert done.result["primes"] == 168 and done.progress.done == done.progress.total

    page = list_jobs.sync(client=client, kind="count_primes")
    assert [item.id for item in page.items] == [job.id] and page.count == 1

    # 409: the same key with other params.
    conflict = submit.sync_detailed(client=client, body=models.SubmitCountPrimes(
        kind="count_primes", params=models.PrimesParams(limit=2000), idempotency_key="generated-1"))
    assert conflict.status_code == 409
    assert isinstance(conflict.parsed, models.ConflictOut)
    assert conflict.parsed.job == job.id and [m.value if hasattr(m, "value") else m
                                             for m in conflict.parsed.mismatch] == ["params"]

    # 422: schema-valid for the generator's types, refused by the server's own rule (below the minimum).
    invalid = submit.sync_detailed(client=client, body=models.SubmitCountPrimes(
        kind="count_primes", params=models.PrimesParams(limit=1)))
    assert invalid.status_code == 422
    assert isinstance(invalid.parsed, models.ValidationErrorOut)
    assert ["body", "params", "limit"] in [list(d.loc) for d in invalid.parsed.detail]

    # 401: a wrong token, typed as the shared error.
    stranger = generated.AuthenticatedClient(base_url=live_server.url, token="not-a-token")
    refused = submit.sync_detailed(client=stranger, body=models.SubmitNoop(kind="noop"))
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ErrorOut)
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="api"'

    # 503: the queue is full; the body is the queue-full schema and Retry-After is a header.
    worker.stop(timeout=10)
    settings.JOBS_QUEUE_LIMITS = {"default": 1}
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    assert submit.sync_detailed(client=client, body=models.SubmitNoop(kind="noop")).status_code == 202
    full = submit.sync_detailed(client=client, body=models.SubmitNoop(kind="noop"))
    assert full.status_code == 503
    assert isinstance(full.parsed, models.QueueFullOut) and full.parsed.queue == "default"
    assert int(full.headers["Retry-After"]) == full.parsed.retry_after >= 1
