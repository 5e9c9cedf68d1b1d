"""CPU-bound kinds: real computation with progress, and a long multi-step job for retry demos."""
import hashlib
import math
import time

from pydantic import BaseModel, ConfigDict, Field

from ..registry import job_kind


class StrictParams(BaseModel):
    """Parameters refuse unknown fields, NaN and infinities, and values of another JSON type than their schema's
    (strict: "5" is not an integer, nor is true): what is stored is what was meant."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class PrimesParams(StrictParams):
    limit: int = Field(1_000_000, ge=2, le=200_000_000, description="Count the primes below this number.")


@job_kind("count_primes", params=PrimesParams, title="Count primes", queue="cpu", soft_time_limit=600,
          time_limit=660)
def count_primes(ctx, params: PrimesParams) -> dict:
    """Count the primes below a limit with a segmented sieve, reporting progress per segment."""
    limit = params.limit
    root = math.isqrt(limit) + 1
    base = bytearray([1]) * root
    base[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if base[i]:
            base[i * i::i] = bytes(len(range(i * i, root, i)))
    small_primes = [i for i in range(root) if base[i]]

    segment = 1 << 20
    count = 0
    largest = None
    for low in range(0, limit, segment):
        high = min(low + segment, limit)
        sieve = bytearray([1]) * (high - low)
        for p in small_primes:
            if p * p >= high:
                break
            start = max(p * p, (low + p - 1) // p * p)
            sieve[start - low::p] = bytes(len(range(start, high, p)))
        for i in range(max(0, 2 - low)):
            if i < len(sieve):
                sieve[i] = 0
        found = sieve.count(1)
        if found:
            count += found
            largest = low + sieve.rindex(1)
        ctx.progress(high, limit, f"sieved up to {high:,}")
    return {"limit": limit, "primes": count, "largest": largest}


class StepsParams(StrictParams):
    steps: int = Field(10, ge=1, le=1000, description="How many steps the job has.")
    step_seconds: float = Field(0.5, ge=0, le=60, description="How long each step works (hashing), in seconds.")
    fail_at_step: int | None = Field(
        None, ge=1, le=1000, description="Raise a retryable error at this step (for demos of retries)."
    )
    fail_attempts: int = Field(
        1000, ge=0, le=1000, description="Fail at that step on this many attempts only; later attempts pass."
    )


class StepFailed(Exception):
    """The failure a `steps` job was told to have: retryable, so it shows backoff and attempts."""


@job_kind("steps", params=StepsParams, title="Multi-step job", queue="default", max_attempts=3,
          retry_on=(StepFailed,), retry_backoff_base=1.0, retry_backoff_max=30.0, soft_time_limit=3000,
          time_limit=3060)
def run_steps(ctx, params: StepsParams) -> dict:
    """Work through steps (each hashes data for a while), reporting each; can fail at a given step."""
    digest = hashlib.sha256(ctx.job_id.encode()).digest()
    hashes = 0
    for step in range(1, params.steps + 1):
        if params.fail_at_step == step and ctx.attempt <= params.fail_attempts:
            raise StepFailed(f"told to fail at step {step} (attempt {ctx.attempt})")
        deadline = time.monotonic() + params.step_seconds
        while True:
            for _ in range(200):
                digest = hashlib.sha256(digest).digest()
            hashes += 200
            if time.monotonic() >= deadline:
                break
        ctx.progress(step, params.steps, f"step {step} of {params.steps}")
    return {"steps": params.steps, "hashes": hashes, "digest": digest.hex()}


class NoopParams(StrictParams):
    pass


@job_kind("noop", params=NoopParams, title="No-op", queue="default", max_attempts=1)
def noop(ctx, params: NoopParams) -> None:
    """Do nothing: measures the platform's own cost per job."""
    return None
