"""Ctrl-C under the real `make run` while a job runs, then `make run` again: the job is handed back, not left
running, and succeeds soon after the restart."""
import os
import signal
import sqlite3
import subprocess
import time

import httpx
import pytest

from tests.support import BASE_DIR, LOG_DIR, free_port, kill_group, wait_for

GRACE = 2


class MakeRun:
    """`make run` in a session of its own, as a terminal runs it; Ctrl-C is SIGINT to its process group."""

    def __init__(self, var_dir, *, web_port: int | None = None, flower_port: int | None = None):
        self.var_dir = var_dir
        self.web_port, self.flower_port = web_port or free_port(), flower_port or free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        self.env.update(JOBS_VAR_DIR=str(var_dir), WEB_PORT=str(self.web_port), FLOWER_PORT=str(self.flower_port),
                        DJANGO_SUPERUSER_PASSWORD="make-run-admin-1", JOBS_SHUTDOWN_GRACE=str(GRACE),
                        PYTHONUNBUFFERED="1", PROMETHEUS_MULTIPROC_DIR=str(var_dir / "prometheus"))
        self.log_path = LOG_DIR / f"make-run-{self.web_port}.log"
        self.process = None

    def start(self) -> "MakeRun":
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=BASE_DIR, env=self.env,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(self.healthy, timeout=120, interval=0.5, message="make run to answer /healthz")
        return self

    def healthy(self) -> bool:
        assert self.process.poll() is None, self.log()[-4000:]
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctrl_c(self, timeout: float) -> float:
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process)


def job_row(var_dir, job_id) -> dict:
    """The job as the database holds it while nothing runs (make run's SQLite file)."""
    with sqlite3.connect(var_dir / "db.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT status, attempts, published_at FROM jobs_job WHERE id = ?",
                               [job_id.replace("-", "")]).fetchone())


@pytest.mark.timeout(600)
def test_ctrl_c_mid_job_hands_it_back_and_the_next_make_run_finishes_it(tmp_path, record_property):
    var_dir = tmp_path / "var"
    first = MakeRun(var_dir)
    try:
        first.start()
        token = subprocess.run([str(BASE_DIR / ".venv/bin/python"), "manage.py", "create_token", "admin"],
                               cwd=BASE_DIR, env=first.env, capture_output=True, text=True, check=True).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        submitted = httpx.post(f"{first.base}/api/jobs", headers=headers, timeout=10,
                               json={"kind": "steps", "params": {"steps": 20, "step_seconds": 0.5}})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        wait_for(lambda: httpx.get(f"{first.base}/api/jobs/{job_id}", headers=headers, timeout=5).json()
                 ["progress"]["done"] >= 1, timeout=60, interval=0.2, message="the job to be under way")

        stop_seconds = first.ctrl_c(timeout=GRACE + 90)
        log = first.log()
        # The worker went first (warm, then stopped after the grace), Redis last.
        assert log.index("sending SIGTERM to worker") < log.index("sending SIGQUIT to worker") < \
            log.index("sending SIGTERM to redis"), log[-4000:]
        row = job_row(var_dir, job_id)
        assert row["status"] == "retrying" and row["attempts"] == 0 and row["published_at"] is None, row

        second = MakeRun(var_dir, web_port=first.web_port, flower_port=first.flower_port).start()
        restarted = time.monotonic()
        done = wait_for(lambda: (lambda j: j if j["status"] == "succeeded" else None)(
            httpx.get(f"{second.base}/api/jobs/{job_id}", headers=headers, timeout=5).json()),
            timeout=60, interval=0.5, message="the handed-back job to succeed after the restart")
        took = time.monotonic() - restarted
        assert done["attempts"] == 1
        second.ctrl_c(timeout=GRACE + 90)
        record_property("seconds_to_succeed_after_restart", round(took, 1))
        print(f"\n[fault counts] stop_seconds={stop_seconds:.1f} succeeded_after_restart_seconds={took:.1f}")
    finally:
        first.kill()
        if "second" in locals():
            second.kill()
