"""The JSON API (django-ninja): jobs, kinds and the queue, with OpenAPI at /api/openapi.json."""
import json
import re
from dataclasses import asdict
from datetime import datetime, timezone as dt_timezone
from typing import Any, Literal
from uuid import UUID

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest
from ninja import Field, NinjaAPI, Query, Router, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.parser import Parser
from ninja.security.base import AuthBase
from ninja.utils import check_csrf
from pydantic import ConfigDict, field_validator
from pydantic.json_schema import models_json_schema

from .. import selectors, services
from ..infra.db import is_database_down
from ..models import Job
from ..registry import all_kinds
from .middleware import database_unavailable_response, refusal_response


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _json_number(text: str) -> float | int:
    """A number with no fraction is an integer, as JSON Schema counts it (2.0 is a valid `integer`); models
    are strict about types, so "2" and true are not."""
    value = float(text)
    return int(value) if value.is_integer() else value


class StrictJsonParser(Parser):
    """JSON bodies only, without NaN or Infinity (they are not JSON and no database stores them)."""

    def parse_body(self, request: HttpRequest):
        return json.loads(request.body, parse_constant=_reject_constant, parse_float=_json_number)


class TokenOrSession(AuthBase):
    """A bearer token, or the dashboard's session (with its CSRF token on writes).

    A request with an Authorization header is a token client and is judged by its token alone:
    401 when it is not a valid bearer token, never a CSRF 403, and the header's value is never
    logged. Without the header a logged-in session is accepted; its writes need the CSRF token.
    """

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __call__(self, request):
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            user = services.api_token_user(plain=token.strip())
            if user is not None:
                request.user = user
            return user
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if request.method not in ("GET", "HEAD", "OPTIONS") and check_csrf(request) is not None:
            raise HttpError(403, "CSRF check failed: a session's writes need the CSRF token (a bearer token needs none)")
        return user


# Answers any operation may give besides its own: declared on every operation of the schema, each
# body by reference to one shared schema, so that generated clients get one type per error.
COMMON_ERRORS = {
    "401": ("No valid token: send `Authorization: Bearer <token>` (or log in to the dashboard).", "ErrorOut"),
    "422": ("Invalid input: `detail` names each bad field (`loc`) and what is wrong with it.", "ValidationErrorOut"),
    "503": ("The queue is full (`queue_full`), or the broker or the database is not answering: try again after "
            "`Retry-After` seconds.", None),
}
BODY_ERRORS = {
    "400": ("The body is not JSON (NaN and Infinity are not JSON either).", "ErrorOut"),
    "403": ("Logged in with a session but without the CSRF token (tokens need none).", "ErrorOut"),
    "413": ("The body is over JOBS_MAX_BODY_BYTES.", "ErrorOut"),
}
SHARED_SCHEMAS = {
    "ValidationErrorOut": {
        "type": "object", "title": "ValidationErrorOut", "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "enum": ["validation_error"]},
            "detail": {"type": "array", "items": {
                "type": "object", "required": ["loc", "msg"],
                "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                               "msg": {"type": "string"}, "type": {"type": "string"}}}},
        },
    },
    "QueueFullOut": {
        "type": "object", "title": "QueueFullOut", "required": ["error", "queue", "depth", "limit", "retry_after"],
        "properties": {"error": {"type": "string", "enum": ["queue_full"]}, "queue": {"type": "string"},
                       "depth": {"type": "integer"}, "limit": {"type": "integer"},
                       "retry_after": {"type": "integer", "description": "Seconds, as in the Retry-After header."}},
    },
    "UnavailableOut": {
        "type": "object", "title": "UnavailableOut", "required": ["error", "detail", "retry_after"],
        "properties": {"error": {"type": "string", "enum": ["broker_unavailable", "database_unavailable"]},
                       "detail": {"type": "string"},
                       "retry_after": {"type": "integer", "description": "Seconds, as in the Retry-After header."}},
    },
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 1}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def submission_schemas(job_in: dict) -> tuple[dict, dict]:
    """The body of POST /api/jobs as generators and fuzzers should see it: one schema per kind (its `kind` a
    single value, its `params` the kind's own schema), joined by a discriminator on `kind`.

    Returns (the request body's schema, the components it refers to). At run time the body is still read as
    JobIn and the kind's parameters validated by its model: the two describe the same input.
    """
    kinds = all_kinds()
    ref_template = "#/components/schemas/{model}"
    _, params_defs = models_json_schema([(k.params_model, "validation") for k in kinds], ref_template=ref_template)
    components = dict(params_defs.get("$defs", {}))
    common = {name: spec for name, spec in job_in["properties"].items() if name not in ("kind", "params")}
    mapping = {}
    for kind in kinds:
        params_name = kind.params_model.__name__
        name = f"Submit{_camel(kind.name)}"
        required = ["kind"] + (["params"] if components.get(params_name, {}).get("required") else [])
        components[name] = {
            "type": "object", "title": name, "additionalProperties": False, "required": required,
            "description": f"{kind.title}: {kind.description}" if kind.description else kind.title,
            "properties": {"kind": {"type": "string", "const": kind.name}, "params": _ref(params_name), **common},
        }
        mapping[kind.name] = f"#/components/schemas/{name}"
    body = {"oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping}}
    return body, components


# Links from a submission to what can be done with the job it returns (OpenAPI 3 links: generated
# documentation shows them, and stateful testing follows them).
JOB_LINKS = {
    "GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/id"}},
    "RetryJob": {"operationId": "retry_job", "parameters": {"job_id": "$response.body#/id"}},
}


class JobsAPI(NinjaAPI):
    """The API, its schema declaring on every operation the errors that any request may get."""

    def get_openapi_operation_id(self, operation) -> str:
        """The view's name (`submit_job`), which generated clients use as the method's name."""
        return operation.view_func.__name__

    def get_openapi_schema(self, *args, **kwargs):
        schema = super().get_openapi_schema(*args, **kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(SHARED_SCHEMAS)
        submit = schema["paths"]["/api/jobs"]["post"]
        body, kind_components = submission_schemas(components.pop("JobIn"))
        components.update(kind_components)
        submit["requestBody"]["content"]["application/json"]["schema"] = body
        for item in schema["paths"].values():
            for operation in item.values():
                for code, response in operation["responses"].items():
                    if str(code) in ("200", "202") and response.get("content", {}).get(
                            "application/json", {}).get("schema") == _ref("JobOut"):
                        response["links"] = {name: link for name, link in JOB_LINKS.items()}
        components.setdefault("ErrorOut", {"type": "object", "title": "ErrorOut", "required": ["detail"],
                                           "properties": {"detail": {"title": "Detail"}}})
        for item in schema["paths"].values():
            for method, operation in item.items():
                errors = {**COMMON_ERRORS, **(BODY_ERRORS if method in ("post", "put", "patch") else {})}
                responses = operation.setdefault("responses", {})
                for code, (description, name) in errors.items():
                    if code == "503":
                        responses[code] = {"description": description, "headers": RETRY_AFTER, "content": {
                            "application/json": {"schema": {"oneOf": [_ref("QueueFullOut"), _ref("UnavailableOut")]}}}}
                    else:
                        responses.setdefault(code, {"description": description,
                                                    "content": {"application/json": {"schema": _ref(name)}}})
        return schema


api = JobsAPI(
    title="Jobs platform API",
    version="1.0",
    description="Submit background jobs, follow them, cancel and retry them. Authenticate with "
    "`Authorization: Bearer <token>` (`python manage.py create_token USERNAME`).",
    auth=TokenOrSession(),
    parser=StrictJsonParser(),
    urls_namespace="api",
)


def _first_nul(value, path=()):
    """The path to the first string holding a NUL character, which PostgreSQL cannot store."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*path, key)
        found = _first_nul(item, (*path, key))
        if found is not None:
            return found
    return None


class ErrorOut(Schema):
    detail: Any


class ConflictOut(Schema):
    error: Literal["idempotency_key_reused"]
    detail: str
    job: UUID = Field(..., description="The job the key already names.")
    mismatch: list[Literal["kind", "params"]] = Field(..., description="What differs from that job's submission.")


class JobIn(Schema):
    model_config = ConfigDict(extra="forbid")

    # strict: a JSON number is not a kind, `true` is not a priority, and a number is not a time (the schema
    # says string; pydantic's lax mode would read it as a Unix timestamp).
    kind: str = Field(..., min_length=1, max_length=200, strict=True, description="A kind from GET /api/kinds.")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's parameters (its JSON schema).")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, strict=True,
        description="Sending the same key again returns the same job.",
    )
    priority: int | None = Field(None, ge=0, le=9, strict=True,
                                 description="0 (lowest) to 9 (highest); the kind's default if absent.")
    run_at: datetime | None = Field(None, description="Not before this time (ISO 8601; UTC if no offset).")

    @field_validator("run_at", mode="before")
    @classmethod
    def time_as_text(cls, value):
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a date-time string (ISO 8601)")
        return value

    @field_validator("kind", "idempotency_key", "params")
    @classmethod
    def no_nul(cls, value):
        path = _first_nul(value)
        if path is not None:
            where = ".".join(map(str, path))
            raise ValueError("must not contain NUL characters" + (f" (at {where})" if where else ""))
        return value


class ProgressOut(Schema):
    done: int
    total: int
    percent: int
    message: str


class JobOut(Schema):
    id: UUID
    kind: str
    status: Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    queue: str
    priority: int
    owner: str | None
    idempotency_key: str | None
    schedule_name: str
    attempts: int
    attempt_limit: int
    progress: ProgressOut
    error: str
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    next_attempt_at: datetime | None
    result: Any = Field(None, description="What a succeeded job returned; null otherwise (see `error`).")

    @staticmethod
    def resolve_owner(job: Job):
        return job.owner.get_username() if job.owner_id else None

    @staticmethod
    def resolve_progress(job: Job):
        return {"done": job.progress_done, "total": job.progress_total, "percent": job.progress_percent,
                "message": job.progress_message}

    @staticmethod
    def resolve_result(job: Job):
        return getattr(job, "result_value", None)


class KindOut(Schema):
    name: str
    title: str
    description: str
    queue: str
    priority: int
    inline: bool
    max_attempts: int
    params_schema: dict[str, Any]


class JobFilters(Schema):
    status: Job.Status | None = None
    kind: str | None = Field(None, max_length=200)


def _with_result(job: Job) -> Job:
    """A succeeded job's return value; a failed job has none (`error` says why it failed)."""
    if job.status == Job.Status.SUCCEEDED:
        job.result_value = selectors.job_result_value(job=job)
    return job


def _get_or_404(request, job_id: UUID) -> Job:
    job = selectors.job_get(user=request.auth, job_id=job_id)
    if job is None:
        raise HttpError(404, "no such job")
    return job


router = Router(tags=["jobs"])


@router.post("/jobs", response={200: JobOut, 202: JobOut, 409: ConflictOut},
             summary="Submit a job")
def submit_job(request, payload: JobIn):
    """Record a job and queue it (202), or run an inline kind now (200). The same idempotency key returns the same job (200)."""
    run_at = payload.run_at
    if run_at is not None and run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=dt_timezone.utc)
    try:
        outcome = services.job_submit(
            user=request.auth, kind=payload.kind, params=payload.params, idempotency_key=payload.idempotency_key,
            priority=payload.priority, run_at=run_at,
        )
    except services.JobInputError as exc:
        raise NinjaValidationError([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors]) from None
    except services.IdempotencyConflict as exc:
        return Status(409, {"error": "idempotency_key_reused", "detail": str(exc), "job": str(exc.job_id),
                            "mismatch": exc.mismatch})
    job = outcome.job
    if not outcome.created or job.is_finished:
        return Status(200, _with_result(job))
    return Status(202, job)


class JobPagination(LimitOffsetPagination):
    """Pages of at most 1000 jobs, and offsets a database can bind (past 2**63 SQLite fails the query)."""

    class Input(Schema):
        limit: int = Field(100, ge=1, le=1000)
        offset: int = Field(0, ge=0, le=10**12)


@router.get("/jobs", response=list[JobOut], summary="List jobs, newest first")
@paginate(JobPagination)
def list_jobs(request, filters: Query[JobFilters]):
    return selectors.job_list(user=request.auth, status=filters.status, kind=filters.kind)


@router.get("/jobs/{job_id}", response={200: JobOut, 404: ErrorOut}, summary="One job, with its result")
def get_job(request, job_id: UUID):
    return _with_result(_get_or_404(request, job_id))


@router.post("/jobs/{job_id}/cancel", response={200: JobOut, 404: ErrorOut, 409: ErrorOut}, summary="Cancel a job")
def cancel_job(request, job_id: UUID):
    try:
        return services.job_cancel(job=_get_or_404(request, job_id))
    except services.JobStateError as exc:
        raise HttpError(409, str(exc)) from None


@router.post("/jobs/{job_id}/retry", response={202: JobOut, 404: ErrorOut, 409: ErrorOut},
             summary="Run a failed or cancelled job again")
def retry_job(request, job_id: UUID):
    try:
        return Status(202, services.job_retry(job=_get_or_404(request, job_id)))
    except services.JobStateError as exc:
        raise HttpError(409, str(exc)) from None


@router.get("/kinds", response=list[KindOut], summary="Job kinds and their parameter schemas")
def list_kinds(request):
    return [
        KindOut(name=k.name, title=k.title, description=k.description, queue=k.queue, priority=k.priority,
                inline=k.inline, max_attempts=k.max_attempts, params_schema=k.params_schema())
        for k in all_kinds()
    ]


class QueueOut(Schema):
    name: str
    depth: int
    limit: int
    low_mark: int
    accepting: bool
    drain_rate: float = Field(..., description="Jobs of this queue started per second, averaged over the last 10 s.")


class QueuesOut(Schema):
    broker: str = Field(..., description="The broker: `redis`, `rabbitmq` or `sqs` (Amazon SQS, whose depths are "
                                         "approximate: eventually consistent, up to a minute behind).")
    accepting: bool
    total_depth: int
    limit: int
    drain_rate: float = Field(..., description="Jobs started per second, averaged over the last 10 s.")
    queues: list[QueueOut]
    submissions: dict[str, int]


@router.get("/queue", response=QueuesOut, tags=["queue"], summary="Queue depth and the gate")
def queue_state(request):
    overview = selectors.queue_overview(max_age=0, workers=False)
    snap = overview.snapshot
    if snap is None:
        raise services.BrokerUnavailable(overview.broker_error)
    return {
        "broker": overview.broker,
        "accepting": snap.accepting,
        "total_depth": snap.total_depth,
        "limit": snap.total_limit,
        "drain_rate": snap.drain_rate,
        "queues": [QueueOut(name=q.name, depth=q.depth, limit=q.limit, low_mark=q.low_mark, accepting=not q.closed,
                           drain_rate=q.drain_rate)
                   for q in snap.queues.values()],
        "submissions": selectors.submission_counts(),
    }


class TimingOut(Schema):
    mean: float | None = Field(..., description="Seconds.")
    p50: float | None = Field(..., description="Seconds, read from histogram buckets (within a bucket's width).")
    p95: float | None = Field(..., description="Seconds, read from histogram buckets (within a bucket's width).")
    max: float | None = Field(..., description="Seconds.")


class KindStatsOut(Schema):
    kind: str
    finished: int
    succeeded: int
    failed: int
    cancelled: int
    success_rate: float | None = Field(..., description="succeeded / (succeeded + failed); null when neither.")
    wait: TimingOut = Field(..., description="From due (run_at, or creation if later) to started.")
    run: TimingOut = Field(..., description="From started to finished.")
    series: list[int] = Field(..., description="Jobs finished per period, in the order of `periods`.")


class StatsOut(Schema):
    window: Literal["hour", "day"]
    step_seconds: int = Field(..., description="The length of one period: 60 (hour window) or 3600 (day window).")
    periods: list[datetime] = Field(..., description="The start of each period, oldest first.")
    counted_through: datetime | None = Field(..., description="Every job finished up to here is counted.")
    overall: KindStatsOut
    kinds: list[KindStatsOut]
    counters: dict[str, dict[str, int]] = Field(
        ..., description="Since Redis started: recovery and schedule events, and runs refused per schedule."
    )


class StatsFilters(Schema):
    window: Literal["hour", "day"] = "hour"


@router.get("/stats", response=StatsOut, tags=["stats"], summary="Finished jobs per kind, from the rollups")
def job_stats(request, filters: Query[StatsFilters]):
    """Platform-wide counts, success rate and wait/run percentiles per kind over the last hour or day."""
    return {**asdict(selectors.job_stats(window=filters.window)), "counters": selectors.periodic_counters()}


api.add_router("/", router)


@api.exception_handler(NinjaValidationError)
def validation_error(request, exc: NinjaValidationError):
    return api.create_response(
        request,
        {"error": "validation_error",
         "detail": [{"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
                    for e in exc.errors]},
        status=422,
    )


@api.exception_handler(AuthenticationError)
def unauthorized(request, exc):
    """401 with the challenge RFC 9110 asks for."""
    response = api.create_response(
        request, {"detail": "send a valid token: Authorization: Bearer <token> (or log in to the dashboard)"},
        status=401)
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@api.exception_handler(services.QueueFull)
@api.exception_handler(services.BrokerUnavailable)
def refused(request, exc):
    """503 with Retry-After: the admission service refused the submission before anything was written."""
    return refusal_response(request, exc)


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def database_unavailable(request, exc):
    """503 while the database is down: ninja answers the API's exceptions before any middleware sees them."""
    if not is_database_down(exc):
        raise exc
    return database_unavailable_response(request, exc)
