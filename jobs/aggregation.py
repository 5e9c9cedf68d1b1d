"""Rolls finished jobs up into per-minute and per-hour statistics per kind, incrementally from a watermark."""
from __future__ import annotations

import bisect
import functools
import logging
import math
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection, transaction
from django.db.models import CharField
from django.db.models.functions import Cast
from django.utils import timezone

from .models import Job, JobHourRollup, JobMinuteRollup, RollupWatermark

logger = logging.getLogger(__name__)

WATERMARK = "job_rollups"
# Ten buckets per decade from 1 ms to 10,000 s (each edge 26% above the last), plus one below
# and one above: a percentile read from them is off by less than its bucket's width.
BUCKET_EDGES: tuple[float, ...] = tuple(0.001 * 10 ** (i / 10) for i in range(71))
# A finish is stamped before its transaction commits, so a job may become visible after one
# stamped later was already counted. Aggregation stays this far behind the clock so that such
# a job is never stepped over; it covers SQLite's 20-second busy timeout with room to spare.
SETTLE_SECONDS = 30
BATCH_SIZE = 20_000


# The bucket a duration in seconds falls in (a partial: no Python call per value of a batch).
bucket_of = functools.partial(bisect.bisect_right, BUCKET_EDGES)


def bucket_bounds(index: int) -> tuple[float, float]:
    low = BUCKET_EDGES[index - 1] if index > 0 else 0.0
    high = BUCKET_EDGES[index] if index < len(BUCKET_EDGES) else math.inf
    return low, high


def histogram_quantile(histogram: dict[int, int], q: float, max_value: float) -> float | None:
    """The q-quantile (nearest rank) estimated from bucket counts, interpolated inside its bucket."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        count = histogram[index]
        if seen + count >= rank:
            low, high = bucket_bounds(index)
            high = min(high, max_value)
            low = min(low, high)
            return low + (high - low) * (rank - seen) / count
        seen += count
    return max_value


@dataclass
class Timing:
    """Sum, max and histogram of one duration (wait or run) over a set of jobs."""

    total: float = 0.0
    max: float = 0.0
    histogram: Counter = field(default_factory=Counter)

    @classmethod
    def of_values(cls, seconds: list[float]) -> Timing:
        return cls(sum(seconds), max(seconds, default=0.0), Counter(map(bucket_of, seconds)))

    def merge(self, other: Timing) -> None:
        self.total += other.total
        self.max = max(self.max, other.max)
        self.histogram.update(other.histogram)

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(self.histogram, q, self.max)


@dataclass
class Summary:
    """What a rollup holds, as numbers to add up: one period, or many merged."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    started: int = 0
    wait: Timing = field(default_factory=Timing)
    run: Timing = field(default_factory=Timing)

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def success_rate(self) -> float | None:
        """Succeeded over succeeded and failed: a cancellation is the user's choice, not a failure."""
        decided = self.succeeded + self.failed
        return self.succeeded / decided if decided else None

    def merge(self, other: Summary) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.started += other.started
        self.wait.merge(other.wait)
        self.run.merge(other.run)

    @classmethod
    def of_rollup(cls, rollup) -> Summary:
        return cls(
            succeeded=rollup.succeeded, failed=rollup.failed, cancelled=rollup.cancelled, started=rollup.started,
            wait=Timing(rollup.wait_sum, rollup.wait_max, _histogram(rollup.wait_histogram)),
            run=Timing(rollup.run_sum, rollup.run_max, _histogram(rollup.run_histogram)),
        )

    def add_to_rollup(self, rollup) -> None:
        merged = self
        if rollup.pk is not None:
            merged = Summary.of_rollup(rollup)
            merged.merge(self)
        rollup.succeeded, rollup.failed, rollup.cancelled = merged.succeeded, merged.failed, merged.cancelled
        rollup.started = merged.started
        rollup.wait_sum, rollup.wait_max, rollup.wait_histogram = (
            merged.wait.total, merged.wait.max, _json_histogram(merged.wait.histogram))
        rollup.run_sum, rollup.run_max, rollup.run_histogram = (
            merged.run.total, merged.run.max, _json_histogram(merged.run.histogram))


def _histogram(stored: dict) -> Counter:
    return Counter({int(k): int(v) for k, v in (stored or {}).items()})


def _json_histogram(histogram: Counter) -> dict[str, int]:
    return {str(k): v for k, v in sorted(histogram.items()) if v}


ROLLUP_FIELDS = ["succeeded", "failed", "cancelled", "started", "wait_sum", "wait_max", "wait_histogram", "run_sum",
                 "run_max", "run_histogram", "updated_at"]


@dataclass(frozen=True)
class AggregationResult:
    jobs: int  # jobs folded into the rollups by this run
    batches: int
    counted_through: datetime | None  # the watermark after the run


TIMESTAMPS = ("created_at", "run_at", "started_at", "finished_at")
STATUS_SLOTS = {Job.Status.SUCCEEDED.value: 0, Job.Status.FAILED.value: 1, Job.Status.CANCELLED.value: 2}


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _as_utc(moment: datetime) -> datetime:
    """A timestamp read as text: SQLite's are naive UTC, PostgreSQL's carry their offset."""
    return moment.replace(tzinfo=dt_timezone.utc) if moment.tzinfo is None else moment.astimezone(dt_timezone.utc)


def _new_jobs(watermark: RollupWatermark, until: datetime):
    """Finished jobs after the watermark, in (finished_at, id) order: a range scan of the finished_at index.

    finished_at is set exactly when a job reaches a final status (a retry clears it), so it is
    the only condition. A filter on status too would let the planner combine the status index,
    whose scan grows with the table.
    """
    qs = Job.objects.filter(finished_at__lte=until)
    if watermark.finished_at is not None:
        # Several jobs may share a finish instant: those up to the watermark's id are counted already.
        qs = qs.filter(finished_at__gte=watermark.finished_at).exclude(
            finished_at=watermark.finished_at, id__lte=watermark.job_id
        )
    return qs.order_by("finished_at", "id")


def aggregate_jobs(*, until: datetime | None = None, batch_size: int = BATCH_SIZE) -> AggregationResult:
    """Fold jobs finished since the last run into the rollups. Safe to run twice or concurrently.

    Each batch reads and advances the watermark under a row lock (on SQLite, the write lock the
    IMMEDIATE transaction takes), so concurrent runs take turns and no job is counted twice.
    The cost is proportional to the new jobs: an index range scan from the watermark, and the
    rollup rows those jobs touch.
    """
    until = until or timezone.now() - timedelta(seconds=SETTLE_SECONDS)
    watermark, _ = RollupWatermark.objects.get_or_create(name=WATERMARK)
    # Look before locking: a run with nothing new costs two reads and no write lock.
    if not _new_jobs(watermark, until).exists():
        return AggregationResult(0, 0, watermark.finished_at)
    jobs = batches = 0
    while True:
        folded, counted_through = _fold_batch(until, batch_size)
        jobs += folded
        batches += 1
        if folded < batch_size:
            break
    if jobs:
        logger.info("aggregation jobs=%s batches=%s counted_through=%s", jobs, batches, counted_through.isoformat())
    return AggregationResult(jobs, batches, counted_through)


@transaction.atomic
def _fold_batch(until: datetime, batch_size: int) -> tuple[int, datetime | None]:
    if connection.vendor == "postgresql":
        # Rollups are derived data and the watermark commits with them: a crash may lose this
        # transaction whole, and the next run folds the same jobs again. No need to wait for the flush.
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
    watermark = RollupWatermark.objects.select_for_update().get(name=WATERMARK)
    rows = list(
        _new_jobs(watermark, until)
        # Read as text and parsed by datetime.fromisoformat: Django's converters cost several
        # microseconds a value on SQLite, most of an incremental run's time.
        .annotate(**{f"{name}_text": Cast(name, CharField()) for name in ("id", *TIMESTAMPS)})
        .values_list("id_text", "kind", "status", *(f"{name}_text" for name in TIMESTAMPS))[:batch_size]
    )
    if not rows:
        return 0, watermark.finished_at
    # (kind, minute) -> [succeeded, failed, cancelled, wait times, run times]; plain lists, as this
    # loop is most of an incremental run's own time.
    groups: dict[tuple[str, datetime], list] = {}
    parse = datetime.fromisoformat  # all naive (SQLite) or all with an offset (PostgreSQL): differences hold
    for _, kind, status, created, run_at, started, finished in rows:
        slot = STATUS_SLOTS.get(status)
        if slot is None:
            continue
        finished_at = parse(finished)
        key = (kind, _minute(finished_at))
        group = groups.get(key)
        if group is None:
            group = groups[key] = [0, 0, 0, [], []]
        group[slot] += 1
        if started is not None:
            # The same definitions as Job.wait_seconds and Job.run_seconds.
            started_at = parse(started)
            group[3].append(max(0.0, (started_at - max(parse(run_at), parse(created))).total_seconds()))
            group[4].append(max(0.0, (finished_at - started_at).total_seconds()))
    minutes = {
        (kind, _as_utc(minute)): Summary(succeeded, failed, cancelled, len(waits), Timing.of_values(waits),
                                         Timing.of_values(runs))
        for (kind, minute), (succeeded, failed, cancelled, waits, runs) in groups.items()
    }
    hours: dict[tuple[str, datetime], Summary] = defaultdict(Summary)
    for (kind, minute), summary in minutes.items():
        hours[(kind, minute.replace(minute=0))].merge(summary)
    _add_to_rollups(JobMinuteRollup, minutes)
    _add_to_rollups(JobHourRollup, hours)
    last_id, *_, last_finished = rows[-1]
    last_finished = _as_utc(datetime.fromisoformat(last_finished))
    watermark.finished_at, watermark.job_id = last_finished, uuid.UUID(last_id)
    watermark.jobs_counted += len(rows)
    watermark.save()
    return len(rows), last_finished


def _add_to_rollups(model, summaries: dict[tuple[str, datetime], Summary]) -> None:
    """Add each summary to its rollup row, creating the rows that do not exist yet."""
    if not summaries:
        return
    starts = [start for _, start in summaries]
    # A batch covers a contiguous stretch of time past the watermark: of the rows in that
    # stretch, only those of its first minute and hour can exist already.
    existing = {
        (r.kind, r.period_start): r
        for r in model.objects.filter(period_start__gte=min(starts), period_start__lte=max(starts),
                                      kind__in={kind for kind, _ in summaries}).order_by()
    }
    now = timezone.now()
    rollups = []
    for (kind, start), summary in summaries.items():
        rollup = existing.get((kind, start)) or model(kind=kind, period_start=start)
        summary.add_to_rollup(rollup)
        rollup.updated_at = now
        rollups.append(rollup)
    # One statement for new and existing rows alike: the sums were made above, under the
    # watermark's lock, so writing them over the stored ones loses nothing.
    model.objects.bulk_create(rollups, batch_size=1000, update_conflicts=True, unique_fields=["period_start", "kind"],
                              update_fields=ROLLUP_FIELDS)

