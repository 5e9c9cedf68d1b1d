"""The JSON API (django-ninja): jobs, kinds and the queue, with OpenAPI at /api/openapi.json."""
import json
import re
from dataclasses import asdict
from datetime import datetime, timezone as dt_timezone
from typing import Annotated, Any, Literal
from uuid import UUID
from zoneinfo import available_timezones

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, NinjaAPI, Path, Query, Router, Schema, Status
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
from ..models import AuditEntry, Job
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


def schedule_schemas(schedule_in: dict) -> tuple[dict, dict]:
    """The body of POST /api/schedules as generators and fuzzers should see it: one schema per kind, as for
    submissions, each with `every_seconds` or `crontab` (one of them). Returns (the body's schema, its components);
    the parameters' own schemas are submission_schemas' components."""
    common = {name: spec for name, spec in schedule_in["properties"].items() if name not in ("kind", "params")}
    components, mapping = {}, {}
    for kind in all_kinds():
        params_name = kind.params_model.__name__
        name = f"Schedule{_camel(kind.name)}"
        components[name] = {
            "type": "object", "title": name, "additionalProperties": False,
            "required": ["name", "kind"] + (["params"] if kind.params_model.model_json_schema().get("required")
                                            else []),
            "oneOf": [{"required": ["every_seconds"]}, {"required": ["crontab"]}],
            "description": f"A schedule of {kind.title}: each run submits one job of it.",
            "properties": {"kind": {"type": "string", "const": kind.name}, "params": _ref(params_name), **common},
        }
        mapping[kind.name] = f"#/components/schemas/{name}"
    body = {"oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping}}
    return body, components


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def _strings_without_nul(schema):
    """`schema` saying what JobIn.no_nul refuses: a string holding NUL. Each string schema with no pattern of its
    own gets one, so that generated input is input the API takes."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and not {"pattern", "const", "enum", "format"} & schema.keys():
            schema["pattern"] = r"^[^\u0000]*$"
        for value in schema.values():
            _strings_without_nul(value)
    elif isinstance(schema, list):
        for item in schema:
            _strings_without_nul(item)
    return schema


def submission_schemas(job_in: dict) -> tuple[dict, dict]:
    """The body of POST /api/jobs as generators and fuzzers should see it: one schema per kind (its `kind` a
    single value, its `params` the kind's own schema), joined by a discriminator on `kind`.

    Returns (the request body's schema, the components it refers to). At run time the body is still read as
    JobIn and the kind's parameters validated by its model: the two describe the same input.
    """
    kinds = all_kinds()
    ref_template = "#/components/schemas/{model}"
    _, params_defs = models_json_schema([(k.params_model, "validation") for k in kinds], ref_template=ref_template)
    components = _strings_without_nul(dict(params_defs.get("$defs", {})))
    common = _strings_without_nul(
        {name: spec for name, spec in job_in["properties"].items() if name not in ("kind", "params")})
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
        create_schedule = schema["paths"].get("/api/schedules", {}).get("post")
        if create_schedule is not None:
            body, schedule_components = schedule_schemas(components.pop("ScheduleIn"))
            components.update(schedule_components)
            create_schedule["requestBody"]["content"]["application/json"]["schema"] = body
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
                # ninja keys an operation's own answers by number: as text, one that it declares (a 403 for a
                # missing permission) is kept, not written over by the shared one, nor doubled in the JSON.
                for code in [code for code in responses if not isinstance(code, str)]:
                    responses[str(code)] = responses.pop(code)
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
        return services.job_cancel(job=_get_or_404(request, job_id), actor=request.auth)
    except services.JobStateError as exc:
        raise HttpError(409, str(exc)) from None


@router.post("/jobs/{job_id}/retry", response={202: JobOut, 404: ErrorOut, 409: ErrorOut},
             summary="Run a failed or cancelled job again")
def retry_job(request, job_id: UUID):
    try:
        return Status(202, services.job_retry(job=_get_or_404(request, job_id), actor=request.auth))
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


# --- Operations: queues paused and resumed, jobs retried or cancelled by filter, the audit log ------------------

QueueName = Annotated[str, Path(..., min_length=1, max_length=64, pattern=r"^[^\u0000/]+$",
                                description="A queue of GET /api/queues.")]


class QueueStateOut(Schema):
    name: str
    depth: int = Field(..., description="Messages waiting (a paused queue's grow up to its limit).")
    limit: int
    accepting: bool = Field(..., description="Whether submissions are accepted (a paused queue's are, up to its "
                                             "limit).")
    paused: bool = Field(..., description="Workers take none of its jobs until it is resumed.")
    paused_at: datetime | None
    paused_by: str | None
    workers: int = Field(..., description="Online workers that serve it (none of them takes its jobs while it "
                                          "is paused).")


class QueuePauseOut(Schema):
    name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None


def _pause_out(name: str, pause) -> dict:
    return {"name": name, "paused": pause is not None, "paused_at": pause.paused_at if pause else None,
            "paused_by": pause.paused_by.get_username() if pause and pause.paused_by_id else None}


# No NUL, which PostgreSQL cannot store (in a query's parameters either).
NO_NUL_PATTERN = r"^[^\u0000]*$"


class BulkFilterIn(Schema):
    model_config = ConfigDict(extra="forbid")

    status: Job.Status | None = Field(None, description="Within the action's own states: failed or cancelled "
                                                        "(retry); queued, retrying or running (cancel).")
    kind: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL_PATTERN, strict=True)
    queue: str | None = Field(None, min_length=1, max_length=64, pattern=NO_NUL_PATTERN, strict=True)
    owner: str | None = Field(None, min_length=1, max_length=150, pattern=NO_NUL_PATTERN, strict=True,
                              description="A username: yours, unless you are staff (another user's is 404).")
    created_after: datetime | None = Field(None, description="Created at or after this time (UTC if no offset).")
    created_before: datetime | None = Field(None, description="Created before this time (UTC if no offset).")
    search: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL_PATTERN, strict=True,
                               description="Text in the parameters (as JSON) or the error, ignoring case.")

    @field_validator("created_after", "created_before", mode="before")
    @classmethod
    def time_as_text(cls, value):
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a date-time string (ISO 8601)")
        return value

    @field_validator("created_after", "created_before")
    @classmethod
    def in_utc(cls, value):
        if value is None:
            return value
        try:
            return value.astimezone(dt_timezone.utc) if value.tzinfo else value.replace(tzinfo=dt_timezone.utc)
        except OverflowError:  # 0001-01-01 at +14:00 is a time before the first UTC one
            raise ValueError("is out of range once in UTC") from None


class BulkIn(Schema):
    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "cancel"]
    filter: BulkFilterIn = Field(default_factory=BulkFilterIn, description="Every condition given, together.")
    dry_run: bool = Field(True, strict=True, description="Count only (the default): send false to act.")


class BulkOut(Schema):
    action: Literal["retry", "cancel"]
    dry_run: bool
    matched: int = Field(..., description="Jobs matching the filter in a state the action applies to.")
    changed: int | None = Field(None, description="Jobs retried or cancelled (absent in a dry run); fewer than "
                                                  "`matched` when some left that state meanwhile.")


class AuditEntryOut(Schema):
    id: int
    at: datetime
    actor: str | None = Field(..., description="The user's name then; null for the platform itself.")
    action: AuditEntry.Action
    target: str = Field(..., description="What was acted on, as type:id (`queue:cpu`, `job:<id>`, ...); empty "
                                         "for a bulk action.")
    filter: dict[str, Any] = Field(..., description="A bulk action's filter.")
    count: int | None = Field(..., description="How many jobs it changed.")
    detail: dict[str, Any]

    @staticmethod
    def resolve_actor(entry: AuditEntry):
        return entry.actor_name or None


class AuditFilters(Schema):
    action: AuditEntry.Action | None = None
    actor: str | None = Field(None, max_length=150, pattern=NO_NUL_PATTERN, description="A username.")
    target: str | None = Field(None, max_length=300, pattern=NO_NUL_PATTERN,
                               description="`queue:cpu`, `job:<id>`, ...")


operations_router = Router(tags=["operations"])


@operations_router.get("/queues", response=list[QueueStateOut], summary="Queues: depth, limit, paused, workers")
def list_queues(request):
    overview = selectors.queue_overview(max_age=0)
    snap = overview.snapshot
    if snap is None:
        raise services.BrokerUnavailable(overview.broker_error)
    paused, serving = overview.paused, overview.workers_per_queue()
    return [{**_pause_out(q.name, paused.get(q.name)), "depth": q.depth, "limit": q.limit,
             "accepting": not (q.closed or snap.total_closed), "workers": serving.get(q.name, 0)}
            for q in snap.queues.values()]


def _queue_action(request, name: str, action):
    try:
        action(queue=name, actor=request.auth)
    except services.NotPermitted as exc:
        raise HttpError(403, str(exc)) from None
    except services.NotFound as exc:
        raise HttpError(404, str(exc)) from None
    except services.JobStateError as exc:
        raise HttpError(409, str(exc)) from None
    return _pause_out(name, selectors.queue_pauses().get(name))


@operations_router.post("/queues/{name}/pause", response={200: QueuePauseOut, 403: ErrorOut, 404: ErrorOut,
                                                           409: ErrorOut}, summary="Pause a queue")
def pause_queue(request, name: QueueName):
    """Workers take none of its jobs until it is resumed (those running finish); submissions are still accepted up
    to its limit. Needs the jobs.pause_queue permission; the platform queue cannot be paused (409)."""
    return _queue_action(request, name, services.queue_pause)


@operations_router.post("/queues/{name}/resume", response={200: QueuePauseOut, 403: ErrorOut, 404: ErrorOut,
                                                            409: ErrorOut}, summary="Resume a paused queue")
def resume_queue(request, name: QueueName):
    """Its workers take its jobs again at once. Needs the jobs.pause_queue permission."""
    return _queue_action(request, name, services.queue_resume)


@operations_router.post("/jobs/bulk", response={200: BulkOut, 403: ErrorOut, 404: ErrorOut},
                        exclude_none=True, summary="Retry or cancel every job matching a filter")
def bulk_jobs(request, payload: BulkIn):
    """Count first (`dry_run`, the default), then act. Your own jobs only, unless you are staff. Jobs are changed in
    batches; one that left the matching state meanwhile is left alone, so repeating it is safe. Needs the
    jobs.bulk_retry or jobs.bulk_cancel permission."""
    f = payload.filter
    try:
        result = services.jobs_bulk(
            actor=request.auth, action=payload.action, dry_run=payload.dry_run,
            filter=services.JobFilter(status=f.status, kind=f.kind, queue=f.queue, owner=f.owner, search=f.search,
                                      created_after=f.created_after, created_before=f.created_before))
    except services.NotPermitted as exc:
        raise HttpError(403, str(exc)) from None
    except services.NotFound as exc:
        raise HttpError(404, str(exc)) from None
    except services.JobInputError as exc:
        raise NinjaValidationError([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors]) from None
    return asdict(result)


@operations_router.get("/audit", response={200: list[AuditEntryOut], 403: ErrorOut},
                       summary="The audit log: operators' actions, newest first")
@paginate(JobPagination)
def audit_log(request, filters: Query[AuditFilters]):
    """Who paused or resumed a queue, retried or cancelled jobs (one or by filter), changed or ran a schedule, or
    revoked a token, and when. Needs the jobs.view_audit permission."""
    if not request.auth.has_perm("jobs.view_audit"):
        raise HttpError(403, "you may not read the audit log: that needs the jobs.view_audit permission")
    return selectors.audit_entries(action=filters.action, actor=filters.actor, target=filters.target)


# Before the jobs router: its /jobs/{job_id} would take /jobs/bulk.
api.add_router("/", operations_router)
api.add_router("/", router)


# --- Schedules: django-celery-beat rows that submit one job per run -------------------------

# A crontab's five fields, each a list of `*`, `*/step`, `n`, `n-m` or `n-m/step` within the field's range (day of
# week 0-6 from Sunday, or sun..sat), as Celery reads them. A day that never occurs in the months given
# (30 2 30 2 *) is a valid crontab that never runs, as in cron.
_STEP = r"/[1-9][0-9]{0,2}"


def _cron_field(number: str) -> str:
    item = rf"(?:\*(?:{_STEP})?|(?:{number})(?:-(?:{number})(?:{_STEP})?)?)"
    return rf"{item}(?:,{item})*"


CRONTAB_PATTERN = "^" + " ".join(_cron_field(n) for n in (
    r"[0-5]?[0-9]", r"[01]?[0-9]|2[0-3]", r"0?[1-9]|[12][0-9]|3[01]", r"0?[1-9]|1[0-2]",
    r"[0-6]|sun|mon|tue|wed|thu|fri|sat")) + "$"
TimeZoneName = Literal[tuple(sorted(available_timezones()))]
# Not blank and no NUL (which PostgreSQL cannot store); the blanks spelled out, as regex dialects differ on \s.
NAME_PATTERN = r"^[^\u0000]*[^\u0000 \t\n\r\x0b\x0c][^\u0000]*$"


class ScheduleIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, pattern=NAME_PATTERN, strict=True,
                      description="Unique; each run's job names it.")
    kind: str = Field(..., min_length=1, max_length=200, strict=True, description="A kind from GET /api/kinds.")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's parameters (its JSON schema).")
    # Absent, not null: a schedule has one or the other, and the schema says so.
    every_seconds: int = Field(None, ge=1, le=services.schedules.MAX_EVERY_SECONDS, strict=True,
                               description="Run every this many seconds (or give `crontab`).")
    crontab: str = Field(
        None, max_length=64, pattern=CRONTAB_PATTERN, strict=True,
        description="Run at these times (or give `every_seconds`): minute hour day-of-month month day-of-week, "
                    "e.g. `30 2 * * 1-5`, read in `crontab_timezone`.")
    crontab_timezone: TimeZoneName = Field(
        "UTC", description="The time zone the crontab's times are in (an IANA name): `0 9 * * *` in "
                           "Europe/Berlin runs at 09:00 there, summer and winter.")
    run_as: str = Field(None, min_length=1, max_length=150, pattern=r"^[^\u0000]+$", strict=True,
                               description="Whose jobs the runs are: you by default; another user needs staff "
                                           "with the permission to add schedules.")
    catch_up: Literal["once", "skip"] = Field(
        "once", description="Runs missed while no beat ran: `once` runs one as soon as beat is back, `skip` none.")
    enabled: bool = Field(True, strict=True, description="False creates it paused.")

    @field_validator("name", "kind", "run_as", "params")
    @classmethod
    def no_nul(cls, value):
        return JobIn.no_nul(value)


class ScheduleOut(Schema):
    id: int
    name: str
    kind: str
    params: dict[str, Any]
    run_as: str | None = Field(..., description="Whose jobs its runs are; null: they have no owner.")
    enabled: bool = Field(..., description="False while paused.")
    every_seconds: int | float | None = Field(..., description="An interval schedule's period.")
    crontab: str | None = Field(..., description="A crontab schedule's five fields.")
    crontab_timezone: str | None = Field(..., description="The time zone its crontab is read in.")
    catch_up: Literal["once", "skip"]
    last_run_at: datetime | None = Field(..., description="When beat last sent it.")
    next_run_at: datetime | None = Field(..., description="When beat sends it next (in the past: overdue, no "
                                                          "beat is running); null while paused or never again.")
    missed_runs: int = Field(..., description="Runs missed while no beat ran, since Redis started.")
    refused_runs: int = Field(..., description="Runs back pressure refused, since Redis started.")
    may_manage: bool = Field(..., description="Whether you may run, pause and resume it.")

    @staticmethod
    def resolve_run_as(info):
        return info.owner

    @staticmethod
    def resolve_every_seconds(info):
        every = info.every_seconds
        return int(every) if every is not None and float(every).is_integer() else every


class ScheduleRunOut(Schema):
    id: UUID
    status: Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
    trigger: Literal["beat", "run now"]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(..., description="From its start to its end (so far, while running).")
    attempts: int
    error: str

    @staticmethod
    def resolve_trigger(job: Job):
        return selectors.schedule_run_trigger(job)

    @staticmethod
    def resolve_duration_seconds(job: Job):
        if job.started_at is None:
            return None
        return max(0.0, ((job.finished_at or timezone.now()) - job.started_at).total_seconds())


class SkippedRunOut(Schema):
    at: datetime
    reason: str


class MissedRunsOut(Schema):
    at: datetime = Field(..., description="When beat found them, as it started.")
    missed: int
    since: datetime = Field(..., description="The last run before them.")
    until: datetime = Field(..., description="The last time missed.")
    policy: Literal["once", "skip"] = Field(..., description="What beat did: one run at once, or none.")


class ScheduleRunsOut(Schema):
    schedule: ScheduleOut
    jobs: list[ScheduleRunOut] = Field(..., description="The jobs it submitted, newest first.")
    refused: list[SkippedRunOut] = Field(..., description="Runs back pressure refused, newest first.")
    invalid: list[SkippedRunOut] = Field(..., description="Runs that could not submit (kind, parameters or owner "
                                                          "gone), newest first.")
    missed: list[MissedRunsOut] = Field(..., description="Runs missed while no beat ran, newest first.")


class ScheduleRunsFilters(Schema):
    limit: int = Field(selectors.SCHEDULE_RUNS_SHOWN, ge=1, le=200, description="Jobs to list, at most.")


ScheduleId = Annotated[int, Path(..., ge=1, le=2**63 - 1)]


def _schedule_or_404(request, schedule_id: int):
    schedule = selectors.schedule_get(user=request.auth, schedule_id=schedule_id)
    if schedule is None:
        raise HttpError(404, "no such schedule")
    return schedule


def _schedule_action(request, schedule_id: int, action):
    schedule = _schedule_or_404(request, schedule_id)
    try:
        return action(user=request.auth, task=schedule.task)
    except services.NotPermitted as exc:
        raise HttpError(403, str(exc)) from None
    except services.JobStateError as exc:
        raise HttpError(409, f"the schedule cannot run: {exc}") from None


schedules_router = Router(tags=["schedules"])


@schedules_router.get("/schedules", response=list[ScheduleOut], summary="Schedules, with their last and next runs")
def list_schedules(request):
    """Your schedules (staff: every user's), by name."""
    return selectors.schedule_list(user=request.auth)


@schedules_router.post("/schedules", response={201: ScheduleOut, 403: ErrorOut, 409: ErrorOut},
                       summary="Schedule a job kind")
def create_schedule(request, payload: ScheduleIn):
    """Submit one job of `kind` every `every_seconds`, or at each time of `crontab`; beat takes it up at once."""
    try:
        task = services.schedule_create(
            user=request.auth, name=payload.name, kind=payload.kind, params=payload.params,
            every_seconds=payload.every_seconds, crontab=payload.crontab, crontab_timezone=payload.crontab_timezone,
            run_as=payload.run_as, catch_up=payload.catch_up, enabled=payload.enabled)
    except services.NotPermitted as exc:
        raise HttpError(403, str(exc)) from None
    except services.ScheduleNameTaken as exc:
        raise HttpError(409, str(exc)) from None
    except services.JobInputError as exc:
        raise NinjaValidationError([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors]) from None
    return Status(201, selectors.schedule_get(user=request.auth, schedule_id=task.pk))


@schedules_router.get("/schedules/{schedule_id}", response={200: ScheduleOut, 404: ErrorOut}, summary="One schedule")
def get_schedule(request, schedule_id: ScheduleId):
    return _schedule_or_404(request, schedule_id)


@schedules_router.get("/schedules/{schedule_id}/runs", response={200: ScheduleRunsOut, 404: ErrorOut},
                      summary="A schedule's runs: its jobs, and the runs that made none")
def schedule_runs(request, schedule_id: ScheduleId, filters: Query[ScheduleRunsFilters]):
    schedule = _schedule_or_404(request, schedule_id)
    runs = selectors.schedule_runs(user=request.auth, schedule=schedule, limit=filters.limit)
    return {"schedule": schedule, "jobs": runs.jobs, "refused": runs.refused, "invalid": runs.invalid,
            "missed": [{**m, "policy": m.get("policy", "once")} for m in runs.missed]}


@schedules_router.post("/schedules/{schedule_id}/run",
                       response={200: JobOut, 202: JobOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
                       summary="Run a schedule now")
def run_schedule(request, schedule_id: ScheduleId):
    """Submit one run at once, besides its regular ones (202 with the job; 200 for an inline kind, done); back
    pressure applies (503)."""
    job = _schedule_action(request, schedule_id, services.schedule_run_now)
    return Status(200, _with_result(job)) if job.is_finished else Status(202, job)


@schedules_router.post("/schedules/{schedule_id}/pause", response={200: ScheduleOut, 403: ErrorOut, 404: ErrorOut},
                       summary="Pause a schedule")
def pause_schedule(request, schedule_id: ScheduleId):
    """No runs until it is resumed; the runs it would have had meanwhile are not caught up."""
    _schedule_action(request, schedule_id, services.schedule_pause)
    return _schedule_or_404(request, schedule_id)


@schedules_router.post("/schedules/{schedule_id}/resume", response={200: ScheduleOut, 403: ErrorOut, 404: ErrorOut},
                       summary="Resume a paused schedule")
def resume_schedule(request, schedule_id: ScheduleId):
    """Its next run is one period (or the next crontab time) after now."""
    _schedule_action(request, schedule_id, services.schedule_resume)
    return _schedule_or_404(request, schedule_id)


api.add_router("/", schedules_router)


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
