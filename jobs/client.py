"""HTTP client and CLI for the jobs API; backs off on 503/429/connection errors. Imports nothing from Django.

    python -m jobs.client submit count_primes --param limit=1000000 --wait
    python -m jobs.client status JOB_ID
    python -m jobs.client cancel JOB_ID

The API address and token come from --url / --token or JOBS_API_URL / JOBS_API_TOKEN.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from typing import Any, Callable

import httpx

RETRYABLE_STATUS = {429, 503}
FINISHED = {"succeeded", "failed", "cancelled"}


class ApiError(Exception):
    """The API refused the request for good (a 4xx other than 429, or a 5xx other than 503)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {json.dumps(body) if not isinstance(body, str) else body}")


class DeadlineExceeded(Exception):
    """Every try within the deadline was refused or failed; says what the last answer was."""


class JobsClient:
    """Calls the API, retrying refusals with exponential backoff and full jitter, within a total deadline."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        deadline: float = 60.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.http = http or httpx.Client(timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.tries = 0  # how many requests the last call sent

    def submit(self, kind: str, params: dict | None = None, *, idempotency_key: str | None = None,
               priority: int | None = None, run_at: str | None = None) -> dict:
        """Submit a job. One idempotency key for every try, so that a retry can never submit twice."""
        body: dict[str, Any] = {"kind": kind, "params": params or {},
                                "idempotency_key": idempotency_key or str(uuid.uuid4())}
        if priority is not None:
            body["priority"] = priority
        if run_at is not None:
            body["run_at"] = run_at
        return self._request("POST", "/api/jobs", json=body)

    def get(self, job_id: str) -> dict:
        return self._request("GET", f"/api/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/api/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict:
        return self._request("POST", f"/api/jobs/{job_id}/retry")

    def wait(self, job_id: str, *, timeout: float = 300.0, poll: float = 0.5,
             on_change: Callable[[dict], None] | None = None) -> dict:
        """Poll until the job finishes; raises DeadlineExceeded when it has not within `timeout`.

        `on_change(job)` is called whenever its status, attempt or progress moved since the last poll.
        """
        end = time.monotonic() + timeout
        seen = None
        while True:
            job = self.get(job_id)
            state = (job["status"], job["attempts"], job["progress"]["done"], job["progress"]["message"])
            if on_change is not None and state != seen:
                on_change(job)
            seen = state
            if job["status"] in FINISHED:
                return job
            if time.monotonic() + poll > end:
                raise DeadlineExceeded(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            self.sleep(poll)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** attempt))

    def _request(self, method: str, path: str, json: dict | None = None) -> dict:
        end = time.monotonic() + self.deadline
        self.tries = 0
        while True:
            self.tries += 1
            retry_after = None
            try:
                response = self.http.request(method, self.base_url + path, json=json, headers=self.headers)
            except httpx.TransportError as exc:
                last = f"connection error: {exc.__class__.__name__}: {exc}"
            else:
                if response.status_code not in RETRYABLE_STATUS:
                    body = _body(response)
                    if response.status_code >= 400:
                        raise ApiError(response.status_code, body)
                    return body
                retry_after = _retry_after(response)
                last = f"HTTP {response.status_code} {json_dumps(_body(response))}"
            # The server's Retry-After is a floor; jitter on top spreads clients that were refused together.
            delay = max(retry_after or 0.0, self.backoff(self.tries - 1))
            remaining = end - time.monotonic()
            if delay > remaining:
                raise DeadlineExceeded(
                    f"gave up after {self.tries} tries in {self.deadline - remaining:.1f}s "
                    f"(deadline {self.deadline:.0f}s); last answer: {last}"
                )
            self.sleep(delay)


def _body(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        return response.text


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def json_dumps(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is read as JSON when it is JSON (numbers, true, lists), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def describe(job: dict) -> str:
    """One line on where a job stands: its id, status, attempt and progress, and a failure's error."""
    progress = job["progress"]
    parts = [f"job {job['id']} {job['status']}"]
    if job["attempts"] > 1 or job["status"] in ("retrying", "failed"):
        parts.append(f"(attempt {job['attempts']} of {job['attempt_limit']})")
    if progress["total"]:
        where = f"{progress['done']:,} of {progress['total']:,} ({progress['percent']}%)"
        parts.append(("at " if job["status"] == "failed" else "") + where)
    if progress["message"]:
        parts.append(f"- {progress['message']}")
    line = " ".join(parts)
    if job["status"] in ("failed", "retrying") and job.get("error"):
        line += f": {job['error']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.client", description="Submit and follow jobs.")
    parser.add_argument("--url", default=os.environ.get("JOBS_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("JOBS_API_TOKEN"))
    parser.add_argument("--deadline", type=float, default=60.0, help="Give up retrying after this many seconds.")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="Submit a job.")
    submit.add_argument("kind")
    submit.add_argument("--param", "-p", action="append", type=parse_param, default=[], metavar="KEY=VALUE")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="Wait until the job finishes.")
    submit.add_argument("--wait-timeout", type=float, default=600.0)
    for name, text in (("status", "Show a job."), ("cancel", "Cancel a job."), ("retry", "Retry a job.")):
        commands.add_parser(name, help=text).add_argument("job_id")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an API token is needed: --token or JOBS_API_TOKEN (python manage.py create_token USERNAME)")

    client = JobsClient(args.url, args.token, deadline=args.deadline)
    try:
        if args.command == "submit":
            job = client.submit(args.kind, dict(args.param), idempotency_key=args.idempotency_key,
                                priority=args.priority)
            if args.wait and job["status"] not in FINISHED:
                # As it goes, on stderr: standard output keeps only the final job, for scripts to read.
                job = client.wait(job["id"], timeout=args.wait_timeout,
                                  on_change=lambda current: print(describe(current), file=sys.stderr, flush=True))
            elif args.wait:
                print(describe(job), file=sys.stderr)
        elif args.command == "status":
            job = client.get(args.job_id)
        elif args.command == "cancel":
            job = client.cancel(args.job_id)
        else:
            job = client.retry(args.job_id)
    except (ApiError, DeadlineExceeded) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(job, indent=2))
    if job["status"] == "failed" and not args.wait:
        print(describe(job), file=sys.stderr)
    return 0 if job["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
