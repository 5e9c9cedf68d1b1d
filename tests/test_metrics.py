"""GET /metrics: who may read it, what it counts (web, gate and worker side), the files of exited processes; job logs."""
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from jobs import services
from jobs.infra import metrics
from jobs.infra.events import JsonFormatter, emit
from jobs.models import Job
from tests.support import database_url_for_subprocess, free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client, **headers) -> dict[tuple, float]:
    """The exposition as {(sample name, sorted labels): value}."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def parse(text: str) -> dict[tuple, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


# --- Access ------------------------------------------------------------------------------


def test_metrics_need_a_login_or_token(client):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_metrics_are_refused_to_a_user_who_is_not_staff(client, user):
    client.force_login(user)
    assert client.get("/metrics").status_code == 403


def test_metrics_accept_a_staff_session(staff_client):
    samples = scrape(staff_client)
    assert value(samples, "jobs_broker_up") == 1


def test_metrics_accept_a_staff_users_bearer_token_and_refuse_anyone_elses(client, staff_user, user):
    staff_token = services.api_token_create(user=staff_user)[1]
    user_token = services.api_token_create(user=user)[1]
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {staff_token}").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {user_token}").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer jpt_not-a-token").status_code == 401


# --- What the web side counts --------------------------------------------------------------


def test_submissions_are_counted_by_kind_and_queue(staff_client, user):
    before = scrape(staff_client)
    for _ in range(3):
        services.job_submit(user=user, kind="count_primes", params={"limit": 100})
    services.job_submit(user=user, kind="noop", params={})
    after = scrape(staff_client)
    grew = value(after, "jobs_submitted_total", kind="count_primes", queue="cpu") - value(
        before, "jobs_submitted_total", kind="count_primes", queue="cpu")
    assert grew == 3
    assert value(after, "jobs_submitted_total", kind="noop", queue="default") - value(
        before, "jobs_submitted_total", kind="noop", queue="default") == 1


def test_queue_depth_and_limit_are_read_from_the_broker_at_scrape_time(staff_client, redis_server, settings):
    settings.JOBS_QUEUE_LIMITS = {"cpu": 50}
    redis_server.client().lpush("io", *[b"x"] * 7)
    samples = scrape(staff_client)
    assert value(samples, "jobs_queue_depth", queue="io") == 7
    assert value(samples, "jobs_queue_depth", queue="cpu") == 0
    assert value(samples, "jobs_queue_limit", queue="cpu") == 50
    assert value(samples, "jobs_queue_limit", queue="io") == settings.JOBS_QUEUE_LIMIT
    assert value(samples, "jobs_queue_accepting", queue="io") == 1


def test_refusals_are_counted_by_reason(staff_client, api, redis_server, settings):
    settings.JOBS_QUEUE_LIMIT = 5
    redis_server.client().lpush("default", *[b"x"] * 5)
    before = value(scrape(staff_client), "jobs_refused_total", reason="queue_full")
    response = api.post("/api/jobs", {"kind": "noop", "params": {}})
    assert response.status_code == 503
    samples = scrape(staff_client)
    assert value(samples, "jobs_refused_total", reason="queue_full") == before + 1
    assert value(samples, "jobs_queue_accepting", queue="default") == 0


def test_a_broker_that_does_not_answer_shows_as_down(staff_client, redis_server):
    redis_server.stop()
    try:
        samples = scrape(staff_client)
    finally:
        redis_server.start()
    assert value(samples, "jobs_broker_up") == 0


# --- Files of processes that have exited --------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    return process.pid


def test_counts_of_exited_processes_are_folded_without_changing_the_sums(staff_client):
    directory = metrics.metrics_dir()
    pid = dead_pid()
    key = mmap_key("jobs_finished", "jobs_finished_total", ("kind", "queue", "status"),
                   ("folding_test", "default", "succeeded"), "Jobs that reached a final status.")
    for _ in range(2):  # two exits, the second folded into the first's sum
        dead = MmapedDict(os.path.join(directory, f"counter_{pid}.db"))
        dead.write_value(key, 4.0, 0.0)
        dead.close()
        before = value(scrape(staff_client), "jobs_finished_total", kind="folding_test", queue="default",
                       status="succeeded")
        assert metrics.fold_exited_processes() >= 1
        assert not os.path.exists(os.path.join(directory, f"counter_{pid}.db"))
        after = value(scrape(staff_client), "jobs_finished_total", kind="folding_test", queue="default",
                      status="succeeded")
        assert after == before
    assert after == 8


def test_files_of_live_processes_are_not_folded():
    services.job_submit(user=None, kind="noop", params={})
    own = os.path.join(metrics.metrics_dir(), f"counter_{os.getpid()}.db")
    assert os.path.exists(own)
    metrics.fold_exited_processes()
    assert os.path.exists(own)


# --- What the worker side counts ------------------------------------------------------------


def test_worker_processes_count_finished_jobs_and_their_wait_and_run_times(staff_client, live_worker, user):
    before = scrape(staff_client)
    jobs = [services.job_submit(user=user, kind="noop", params={}).job for _ in range(4)]
    failing = services.job_submit(user=user, kind="steps",
                                  params={"steps": 1, "step_seconds": 0, "fail_at_step": 1, "fail_attempts": 1}).job
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs] + [failing.pk],
                                        status=Job.Status.SUCCEEDED).count() == 5,
             timeout=60, message="the jobs to succeed")
    after = scrape(staff_client)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("jobs_finished_total", kind="noop", queue="default", status="succeeded") == 4
    assert grew("jobs_wait_seconds_count", kind="noop", queue="default") == 4
    assert grew("jobs_run_seconds_count", kind="noop", queue="default", outcome="succeeded") == 4
    assert grew("jobs_run_seconds_bucket", kind="noop", queue="default", outcome="succeeded", le="+Inf") == 4
    assert grew("jobs_retried_total", kind="steps", queue="default") == 1
    assert grew("jobs_run_seconds_count", kind="steps", queue="default", outcome="retrying") == 1
    assert grew("jobs_finished_total", kind="steps", queue="default", status="succeeded") == 1
    # Only the first delivery's wait is queueing; the retry waited out its backoff.
    assert grew("jobs_wait_seconds_count", kind="steps", queue="default") == 1


def test_workers_online_come_from_their_heartbeats_and_go_when_they_stop(staff_client, worker_factory):
    worker = worker_factory(queues="cpu,io")

    def online(n):
        samples = scrape(staff_client)
        return samples if value(samples, "jobs_workers_online") == n else None

    samples = wait_for(lambda: online(1), timeout=30, interval=0.5, message="the worker's first heartbeat")
    assert value(samples, "jobs_queue_workers", queue="cpu") == 1
    assert value(samples, "jobs_queue_workers", queue="io") == 1
    assert value(samples, "jobs_queue_workers", queue="default") == 0
    assert value(samples, "jobs_worker_running", worker=worker.hostname) == 0

    worker.stop()
    wait_for(lambda: online(0), timeout=30, interval=0.5, message="the stopped worker to leave the registry")


def test_cancelled_jobs_are_counted_as_finished(staff_client, user):
    before = value(scrape(staff_client), "jobs_finished_total", kind="noop", queue="default", status="cancelled")
    services.job_cancel(job=services.job_submit(user=user, kind="noop", params={}).job)
    after = value(scrape(staff_client), "jobs_finished_total", kind="noop", queue="default", status="cancelled")
    assert after == before + 1


# --- Under gunicorn: two web processes, one sum --------------------------------------------


def test_gunicorn_processes_add_up_and_a_worker_host_serves_its_own(redis_server, staff_user, worker_factory,
                                                                  tmp_path):
    """The Procfile's web line with 2 processes: whichever answers, the counts are the host's."""
    from tests.support import BASE_DIR, LOG_DIR

    import httpx

    token = services.api_token_create(user=staff_user)[1]
    port = free_port()
    procfile = dict(line.split(": ", 1) for line in (BASE_DIR / "Procfile").read_text().splitlines() if line)
    env = {**os.environ, "REDIS_URL": redis_server.url, "CELERY_BROKER_URL": redis_server.url,
           "DATABASE_URL": database_url_for_subprocess(), "WEB_PORT": str(port), "WEB_CONCURRENCY": "2",
           "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(LOG_DIR / f"gunicorn-{port}.log", "ab")
    server = subprocess.Popen(["sh", "-c", procfile["web"]], cwd=BASE_DIR, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, interval=0.2, message="gunicorn to answer")
        # No control socket at the per-user path every gunicorn of this user would share.
        assert not (tmp_path / "gunicorn.ctl").exists() and not (tmp_path / ".gunicorn").exists()
        before = parse(httpx.get(f"{base}/metrics", headers=headers, timeout=10).text)

        def submit(_):
            return httpx.post(f"{base}/api/jobs", json={"kind": "noop", "params": {}}, headers=headers,
                              timeout=30).status_code

        # Concurrent, so that both gunicorn processes take submissions.
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(submit, range(40))) == [202] * 40
        per_process = {pid: submitted_in_file(pid) for pid in children_of(server.pid)}
        assert len([n for n in per_process.values() if n > 0]) == 2, per_process  # each process its own file
        assert sum(per_process.values()) == 40
        for _ in range(10):
            samples = parse(httpx.get(f"{base}/metrics", headers=headers, timeout=10).text)
            assert value(samples, "jobs_submitted_total", kind="noop", queue="default") - value(
                before, "jobs_submitted_total", kind="noop", queue="default") == 40

        # A worker with JOBS_METRICS_PORT serves the same host's sums on its own port.
        metrics_port = free_port()
        worker_factory(env={"JOBS_METRICS_PORT": str(metrics_port)})
        worker_text = wait_for(lambda: _get_or_none(f"http://127.0.0.1:{metrics_port}/metrics"), timeout=30,
                               message="the worker's metrics port")
        worker_samples = parse(worker_text)
        assert value(worker_samples, "jobs_submitted_total", kind="noop", queue="default") >= 40
        assert not any(name == "jobs_queue_depth" for name, _ in worker_samples)  # queues are the web's to tell
    finally:
        os.killpg(server.pid, 15)
        server.wait(20)
        log.close()


def children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                continue
    return children


def submitted_in_file(pid: int) -> float:
    path = os.path.join(metrics.metrics_dir(), f"counter_{pid}.db")
    if not os.path.exists(path):
        return 0.0
    return sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(path)
               if json.loads(key)[1] == "jobs_submitted_total" and json.loads(key)[2].get("kind") == "noop")


def _get_or_none(url: str) -> str | None:
    import httpx

    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


# --- Logs: one line per state change ------------------------------------------------------


def test_key_value_and_json_lines_carry_job_kind_and_attempt(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="jobs.events"):
        emit("retrying", job_id="abc", kind="steps", attempt=2, error="told to fail")
    record = caplog.records[-1]
    assert record.getMessage() == 'event=retrying job=abc kind=steps attempt=2 error="told to fail"'
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("event", "job", "kind", "attempt", "error")} == {
        "event": "retrying", "job": "abc", "kind": "steps", "attempt": 2, "error": "told to fail"}


def test_every_state_change_of_a_job_is_one_json_line_with_its_attempt(worker_factory, user, caplog):
    import logging

    worker = worker_factory(env={"JOBS_LOG_FORMAT": "json"})
    with caplog.at_level(logging.INFO, logger="jobs.events"):
        job = services.job_submit(user=user, kind="steps",
                                  params={"steps": 1, "step_seconds": 0, "fail_at_step": 1, "fail_attempts": 1}).job
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).exists(), timeout=60,
             message="the job to succeed")
    submitted = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("job") == str(job.id)]
    assert [(f["event"], f["attempt"]) for f in submitted] == [("submitted", 0)]

    def worker_events():
        events = []
        for line in worker.log().splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("logger") == "jobs.events" and data.get("job") == str(job.id):
                events.append(data)
        return events if len(events) >= 4 else None

    events = wait_for(worker_events, timeout=10, message="the worker's job lines")
    assert [(e["event"], e["attempt"]) for e in events] == [
        ("running", 1), ("retrying", 1), ("running", 2), ("succeeded", 2)]
    assert all(e["kind"] == "steps" and e["level"] == "INFO" for e in events)


SCRAPE_IN_A_NEW_PROCESS = """
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from jobs.web.metrics_view import metrics_view
request = RequestFactory().get("/metrics")
request.user = get_user_model()(username="staff", is_staff=True, is_active=True)
print(metrics_view(request).content.decode())
"""


def test_refusals_are_exposed_at_zero_before_the_first(tmp_path, redis_server):
    """A scrape of a host where nothing was ever refused (a new metrics directory and process)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "REDIS_URL": redis_server.url,
           "CELERY_BROKER_URL": redis_server.url, "DATABASE_URL": database_url_for_subprocess()}
    result = subprocess.run([sys.executable, "-c", SCRAPE_IN_A_NEW_PROCESS], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = parse(result.stdout)
    for reason in ("queue_full", "broker_down"):
        assert samples[("jobs_refused_total", (("reason", reason),))] == 0


# --- promtool's lint of a real scrape ---------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but promtool is not on PATH (Debian package: prometheus; .ci/run "
                        "installs it)")
        pytest.skip("no promtool on PATH (install Debian's prometheus package); set REQUIRE_BROWSER=1 to fail instead")
    return path


def test_a_scrape_after_jobs_and_a_refusal_passes_promtool(promtool, staff_client, api, worker_factory, user,
                                                            redis_server, settings):
    from jobs.tasks import publish_due_jobs

    worker = worker_factory(queues="default,io,platform")
    publish_due_jobs.delay()  # a housekeeping run
    jobs = [services.job_submit(user=user, kind="noop", params={}).job for _ in range(3)]
    jobs.append(services.job_submit(user=user, kind="steps", params={
        "steps": 1, "step_seconds": 0, "fail_at_step": 1, "fail_attempts": 1}).job)  # one retry, then success
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status=Job.Status.SUCCEEDED).count() == 4,
             timeout=60, message="the jobs to succeed")

    def every_family_has_a_sample() -> bool:
        samples = scrape(staff_client)
        return (("jobs_worker_running", (("worker", worker.hostname),)) in samples
                and value(samples, "jobs_housekeeping_runs_total", task="publish_due") >= 1)

    wait_for(every_family_has_a_sample, timeout=30, interval=0.5, message="the worker's heartbeat and housekeeping run")

    # Back pressure: `cpu` (which nobody consumes) is full, so a cpu job is refused.
    settings.JOBS_QUEUE_LIMITS = {"cpu": 2}
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    redis_server.client().lpush("cpu", *[b"x"] * 2)
    refused = api.post("/api/jobs", {"kind": "count_primes", "params": {"limit": 10}})
    assert refused.status_code == 503, refused.content

    response = staff_client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    samples = parse(text)
    assert value(samples, "jobs_refused_total", reason="queue_full") >= 1
    assert value(samples, "jobs_finished_total", kind="noop", queue="default", status="succeeded") >= 3
    assert value(samples, "jobs_retried_total", kind="steps", queue="default") >= 1

    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    problems = (checked.stdout + checked.stderr).strip()
    assert checked.returncode == 0 and not problems, f"promtool exited {checked.returncode}:\n{problems}\n\n{text}"
