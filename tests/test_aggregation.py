"""Rollups: checked against a direct computation on the same jobs; incremental, idempotent, concurrent; read by stats."""
import math
import random
import threading
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection

from jobs import aggregation, selectors
from jobs.aggregation import aggregate_jobs, bucket_bounds, bucket_of, histogram_quantile
from jobs.models import Job, JobHourRollup, JobMinuteRollup, RollupWatermark

pytestmark = pytest.mark.django_db

S = Job.Status
BASE = datetime(2030, 3, 4, 10, 0, tzinfo=dt_timezone.utc)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=dt_timezone.utc)


def make_jobs(n, *, rng, start=BASE, span_minutes=150, kinds=("alpha", "beta", "gamma"), finished_at=None):
    """Finished jobs with varied outcomes and times; some cancelled before they ever started."""
    jobs = []
    for _ in range(n):
        created = start + timedelta(seconds=rng.uniform(0, span_minutes * 60))
        run_at = created + timedelta(seconds=rng.choice([0, 0, 0, rng.uniform(0, 120)]))
        status = rng.choice([S.SUCCEEDED] * 6 + [S.FAILED] * 2 + [S.CANCELLED])
        if status == S.CANCELLED and rng.random() < 0.5:
            started = None
            finished = finished_at or run_at + timedelta(seconds=rng.uniform(0, 30))
        else:
            started = max(run_at, created) + timedelta(seconds=rng.lognormvariate(0, 1.5))
            finished = finished_at or started + timedelta(seconds=rng.lognormvariate(-1, 2))
        jobs.append(Job(kind=rng.choice(kinds), status=status, created_at=created, run_at=run_at,
                        started_at=started, finished_at=finished, published_at=created, attempts=1))
    return Job.objects.bulk_create(jobs)


def nearest_rank(values, q):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def assert_quantile_close(estimate, values, q):
    """The estimate is within the width of the bucket that holds the true (nearest-rank) quantile."""
    true = nearest_rank(values, q)
    low, high = bucket_bounds(bucket_of(true))
    width = min(high, max(values)) - low
    assert abs(estimate - true) <= width + 1e-9, (q, estimate, true, width)


def direct(period):
    """The rollups computed straight from the Job rows, per (kind, period start)."""
    groups = defaultdict(list)
    for job in Job.objects.filter(finished_at__isnull=False):
        start = job.finished_at.replace(second=0, microsecond=0)
        if period == "hour":
            start = start.replace(minute=0)
        groups[(job.kind, start)].append(job)
    return groups


def assert_rollups_match_jobs(model, period):
    groups = direct(period)
    rollups = {(r.kind, r.period_start): r for r in model.objects.all()}
    assert set(rollups) == set(groups)
    for key, jobs in groups.items():
        rollup = rollups[key]
        for status in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
            assert getattr(rollup, status) == sum(j.status == status for j in jobs), (key, status)
        timed = [j for j in jobs if j.started_at is not None]
        assert rollup.started == len(timed)
        summary = aggregation.Summary.of_rollup(rollup)
        for name, values in (("wait", [j.wait_seconds for j in timed]), ("run", [j.run_seconds for j in timed])):
            timing = getattr(summary, name)
            if not values:
                assert timing.quantile(0.5) is None
                continue
            assert timing.total == pytest.approx(sum(values), rel=1e-9, abs=1e-6)
            assert timing.max == pytest.approx(max(values))
            assert sum(timing.histogram.values()) == len(values)
            for q in (0.5, 0.95):
                assert_quantile_close(timing.quantile(q), values, q)


def rollup_snapshot():
    fields = ["kind", "period_start", "succeeded", "failed", "cancelled", "started", "wait_sum", "wait_max",
              "wait_histogram", "run_sum", "run_max", "run_histogram"]
    return [sorted(model.objects.values_list(*fields)) for model in (JobMinuteRollup, JobHourRollup)]


def test_rollups_match_a_direct_computation_on_the_same_jobs():
    make_jobs(1500, rng=random.Random(1))
    result = aggregate_jobs(until=FAR_FUTURE)
    assert result.jobs == 1500
    assert_rollups_match_jobs(JobMinuteRollup, "minute")
    assert_rollups_match_jobs(JobHourRollup, "hour")
    assert RollupWatermark.objects.get().jobs_counted == 1500


def test_hourly_rollups_are_the_sum_of_their_minutes():
    make_jobs(600, rng=random.Random(2))
    aggregate_jobs(until=FAR_FUTURE)
    for hour in JobHourRollup.objects.all():
        minutes = JobMinuteRollup.objects.filter(kind=hour.kind, period_start__gte=hour.period_start,
                                                 period_start__lt=hour.period_start + timedelta(hours=1))
        summed = aggregation.Summary()
        for minute in minutes:
            summed.merge(aggregation.Summary.of_rollup(minute))
        assert (summed.succeeded, summed.failed, summed.cancelled, summed.started) == (
            hour.succeeded, hour.failed, hour.cancelled, hour.started)
        assert dict(summed.run.histogram) == {int(k): v for k, v in hour.run_histogram.items()}
        assert summed.wait.total == pytest.approx(hour.wait_sum)


def test_a_second_run_changes_nothing():
    make_jobs(300, rng=random.Random(3))
    assert aggregate_jobs(until=FAR_FUTURE).jobs == 300
    before = rollup_snapshot()
    again = aggregate_jobs(until=FAR_FUTURE)
    assert again.jobs == 0 and again.batches == 0
    assert rollup_snapshot() == before


def assert_same_rollups(a, b):
    """Equal counts and histograms; sums equal up to the order floats were added in."""
    for rows_a, rows_b in zip(a, b):
        assert len(rows_a) == len(rows_b)
        for x, y in zip(rows_a, rows_b):
            assert x[:6] == y[:6] and x[8] == y[8] and x[11] == y[11]
            assert x[6] == pytest.approx(y[6]) and x[9] == pytest.approx(y[9])
            assert x[7] == y[7] and x[10] == y[10]


def test_incremental_runs_in_small_batches_equal_one_full_run():
    rng = random.Random(4)
    make_jobs(400, rng=rng)
    # Jobs sharing one finish instant straddle batch boundaries: the watermark's id breaks the tie.
    make_jobs(25, rng=rng, finished_at=BASE + timedelta(minutes=30, seconds=7))
    assert aggregate_jobs(until=FAR_FUTURE, batch_size=7).jobs == 425
    watermark = RollupWatermark.objects.get()
    make_jobs(150, rng=rng, start=BASE + timedelta(minutes=160))
    for k in range(1, 4):  # at the watermark's very instant, sorting after it
        Job.objects.create(id=uuid.UUID(int=watermark.job_id.int + k), kind="beta", status=S.SUCCEEDED,
                           created_at=BASE, run_at=BASE, started_at=BASE, finished_at=watermark.finished_at)
    assert aggregate_jobs(until=FAR_FUTURE, batch_size=11).jobs == 153
    incremental = rollup_snapshot()

    JobMinuteRollup.objects.all().delete()
    JobHourRollup.objects.all().delete()
    RollupWatermark.objects.all().delete()
    assert aggregate_jobs(until=FAR_FUTURE).jobs == 578
    assert_same_rollups(incremental, rollup_snapshot())
    assert_rollups_match_jobs(JobMinuteRollup, "minute")


def test_jobs_after_the_watermark_with_equal_finish_time_are_counted_once():
    instant = BASE + timedelta(minutes=5)
    ids = sorted(uuid.uuid4() for _ in range(6))
    for job_id in ids[:3]:
        Job.objects.create(id=job_id, kind="alpha", status=S.SUCCEEDED, created_at=BASE, run_at=BASE,
                           started_at=BASE, finished_at=instant)
    assert aggregate_jobs(until=FAR_FUTURE).jobs == 3
    for job_id in ids[3:]:
        Job.objects.create(id=job_id, kind="alpha", status=S.FAILED, created_at=BASE, run_at=BASE,
                           started_at=BASE, finished_at=instant)
    assert aggregate_jobs(until=FAR_FUTURE).jobs == 3
    rollup = JobMinuteRollup.objects.get()
    assert (rollup.succeeded, rollup.failed) == (3, 3)


def test_jobs_finished_within_the_settle_delay_wait_for_a_later_run():
    from django.utils import timezone

    now = timezone.now()
    recent = now - timedelta(seconds=aggregation.SETTLE_SECONDS / 2)
    Job.objects.create(kind="alpha", status=S.SUCCEEDED, created_at=recent, run_at=recent, started_at=recent,
                       finished_at=recent)
    Job.objects.create(kind="alpha", status=S.SUCCEEDED, created_at=now - timedelta(minutes=5),
                       run_at=now - timedelta(minutes=5), started_at=now - timedelta(minutes=5),
                       finished_at=now - timedelta(minutes=4))
    assert aggregate_jobs().jobs == 1
    assert aggregate_jobs(until=now + timedelta(seconds=1)).jobs == 1


def test_unfinished_jobs_are_not_counted():
    Job.objects.create(kind="alpha", status=S.RUNNING, started_at=BASE)
    Job.objects.create(kind="alpha", status=S.QUEUED)
    assert aggregate_jobs(until=FAR_FUTURE).jobs == 0
    assert not JobMinuteRollup.objects.exists()


def test_an_empty_run_reads_two_rows_and_writes_nothing(django_assert_max_num_queries):
    make_jobs(50, rng=random.Random(6))
    aggregate_jobs(until=FAR_FUTURE)
    with django_assert_max_num_queries(2):
        assert aggregate_jobs(until=FAR_FUTURE).jobs == 0


def test_incremental_run_touches_only_the_new_jobs_rollups(django_assert_max_num_queries):
    rng = random.Random(7)
    make_jobs(2000, rng=rng)
    aggregate_jobs(until=FAR_FUTURE)
    make_jobs(100, rng=rng, start=BASE + timedelta(minutes=200), span_minutes=1, kinds=("alpha",))
    # Watermark, peek, watermark lock, the new jobs, a read and a write per rollup table, watermark write
    # (and the test transaction's savepoint), plus SET LOCAL synchronous_commit on PostgreSQL: none of it
    # depends on the 2,000 jobs already counted.
    from django.db import connection

    with django_assert_max_num_queries(12 if connection.vendor == "postgresql" else 11):
        assert aggregate_jobs(until=FAR_FUTURE).jobs == 100


def test_histogram_quantiles_stay_within_a_bucket_of_the_true_value():
    rng = random.Random(8)
    for _ in range(200):
        values = [rng.lognormvariate(rng.uniform(-6, 6), rng.uniform(0.1, 3)) for _ in range(rng.randint(1, 400))]
        histogram = defaultdict(int)
        for v in values:
            histogram[bucket_of(v)] += 1
        for q in (0.5, 0.95, 0.99):
            assert_quantile_close(histogram_quantile(histogram, q, max(values)), values, q)


def test_bucket_edges_cover_a_millisecond_to_hours():
    assert bucket_of(0.0) == 0
    assert bucket_bounds(bucket_of(0.0005)) == (0.0, aggregation.BUCKET_EDGES[0])
    low, high = bucket_bounds(bucket_of(3600))
    assert low <= 3600 < high and high / low == pytest.approx(10 ** 0.1)
    assert bucket_bounds(bucket_of(1e6))[1] == math.inf


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_count_every_job_once():
    make_jobs(3000, rng=random.Random(9))
    errors = []

    def run():
        try:
            aggregate_jobs(until=FAR_FUTURE, batch_size=250)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert RollupWatermark.objects.get().jobs_counted == 3000
    assert_rollups_match_jobs(JobMinuteRollup, "minute")
    assert_rollups_match_jobs(JobHourRollup, "hour")


# --- Reading the rollups: selector, API, page -----------------------------------------


def test_stats_selector_reads_the_last_hour_per_minute():
    now = BASE + timedelta(minutes=59, seconds=30)
    make_jobs(500, rng=random.Random(10), span_minutes=58)
    make_jobs(20, rng=random.Random(11), start=BASE - timedelta(hours=3), span_minutes=30)  # outside the hour
    aggregate_jobs(until=FAR_FUTURE)
    stats = selectors.job_stats(window="hour", now=now)
    assert len(stats.periods) == 60 and stats.periods[-1] == BASE + timedelta(minutes=59)
    in_window = Job.objects.filter(finished_at__gte=stats.periods[0])
    assert stats.overall.finished == in_window.count()
    assert sum(stats.overall.series) == in_window.count()
    for kind in stats.kinds:
        jobs = in_window.filter(kind=kind.kind)
        assert kind.finished == jobs.count()
        assert kind.succeeded == jobs.filter(status=S.SUCCEEDED).count()
        decided = jobs.filter(status__in=[S.SUCCEEDED, S.FAILED]).count()
        assert kind.success_rate == pytest.approx(kind.succeeded / decided)
        runs = [j.run_seconds for j in jobs if j.started_at]
        assert_quantile_close(kind.run.p95, runs, 0.95)
        assert kind.run.max == pytest.approx(max(runs))
        for i, start in enumerate(stats.periods):
            assert kind.series[i] == jobs.filter(finished_at__gte=start,
                                                 finished_at__lt=start + timedelta(minutes=1)).count()


def test_stats_selector_reads_the_last_day_per_hour():
    make_jobs(300, rng=random.Random(12), span_minutes=600)
    aggregate_jobs(until=FAR_FUTURE)
    stats = selectors.job_stats(window="day", now=BASE + timedelta(hours=23, minutes=5))
    assert len(stats.periods) == 24 and stats.step_seconds == 3600
    assert stats.overall.finished == Job.objects.filter(finished_at__gte=stats.periods[0]).count()


def test_api_stats_returns_the_rollups(api, user):
    from django.utils import timezone

    make_jobs(80, rng=random.Random(13), start=timezone.now() - timedelta(minutes=40), span_minutes=20)
    aggregate_jobs(until=FAR_FUTURE)
    body = api.get("/api/stats", window="hour").json()
    assert body["window"] == "hour" and len(body["periods"]) == 60
    assert body["overall"]["finished"] == 80
    assert {k["kind"] for k in body["kinds"]} == set(Job.objects.values_list("kind", flat=True))
    assert body["overall"]["run"]["p95"] >= body["overall"]["run"]["p50"] > 0
    assert body["counted_through"] is not None
    assert api.get("/api/stats", window="week").status_code == 422


def test_api_stats_needs_authentication(api_for):
    assert api_for(None).get("/api/stats").status_code == 401


def test_stats_page_draws_the_charts_as_svg(client, user):
    from django.utils import timezone

    make_jobs(60, rng=random.Random(14), start=timezone.now() - timedelta(minutes=30), span_minutes=20)
    aggregate_jobs(until=FAR_FUTURE)
    client.force_login(user)
    for window in ("hour", "day"):
        response = client.get("/stats", {"window": window})
        assert response.status_code == 200
        html = response.content.decode()
        assert html.count("<svg") == 4
        assert "alpha" in html and "Jobs finished per" in html
        assert "<script" not in html.split("<svg", 1)[1]  # pygal's scripts are left out


def test_stats_page_without_rollups_says_so(client, user):
    client.force_login(user)
    response = client.get("/stats")
    assert response.status_code == 200 and "No job finished in this window yet" in response.content.decode()
