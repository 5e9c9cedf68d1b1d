"""A randomized fault run: thousands of jobs while workers, Redis and beat are killed and restarted at random.

    .venv/bin/python bench/fault_run.py [--jobs 3000] [--seconds 180] [--seed N]

Everything runs on this machine, on loopback: its own redis-server (no persistence, so a restart
loses every queued message), its own SQLite database under var/bench/, two job workers, the
housekeeping worker and beat, started from the Procfile's lines. Jobs are submitted at a steady
rate through the submit service while, every few seconds, one fault is chosen at random: a job
worker killed with SIGKILL (and a new one started), a job worker stopped warm (SIGTERM) and
started again, Redis killed and started again empty, beat killed and started again. Then the
faults stop and the run waits for every job to finish.

It reports jobs lost (not succeeded at the end), doubled (more than one successful finish in the
workers' logs), results missing (succeeded without a SUCCESS TaskResult), and for the jobs a
killed worker was running: how long until they were taken back (no longer recorded as running on
the dead worker) and until they ran again elsewhere (p50 / p99). Results go to bench/results/fault_run.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=180, help="how long faults are injected")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if common.quick():
        args.jobs, args.seconds = min(args.jobs, 200), min(args.seconds, 30)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    rng = random.Random(seed)

    redis = common.RedisServer("faults")
    database = common.Database("sqlite", "faults")
    run_dir = common.WORK_DIR / f"faults-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "REDIS_URL": redis.url, "CELERY_BROKER_URL": redis.url, "DATABASE_URL": database.url,
           "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus"), "PYTHONUNBUFFERED": "1",
           "PATH": f"{common.VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.update({k: env[k] for k in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL",
                                           "PROMETHEUS_MULTIPROC_DIR")})
    database.migrate(env)

    import django

    django.setup()
    import logging

    logging.getLogger("jobs.events").setLevel(logging.WARNING)  # a line per job would bury the report
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db.models import Count
    from django_celery_results.models import TaskResult

    from jobs import services
    from jobs.models import Job
    from jobs.services import admission

    call_command("install_schedules", verbosity=0)
    user = get_user_model().objects.create_user(username="faults", password="faults-password-1")

    processes: dict[str, common.Process] = {}
    logs: list[Path] = []
    counter = Counter()

    def start(name: str, line: str, **extra) -> None:
        log_path = run_dir / f"{name}-{counter[name]}.log"
        counter[name] += 1
        logs.append(log_path)
        command = common.procfile_line(line)
        if line == "worker":
            command = command.replace("--hostname jobs@%h", f"--hostname {name}-{counter[name]}@%h")
        processes[name] = common.Process(["sh", "-c", command], env={**env, **extra}, log_path=log_path)

    for name in ("worker-a", "worker-b"):
        start(name, "worker", WORKER_QUEUES="default")
    start("housekeeping", "housekeeping")
    start("beat", "beat")

    recovery: list[float] = []  # from the kill to the job running again elsewhere (or done)
    taken_back: list[float] = []  # from the kill to the job no longer recorded as running on the dead worker
    pending: dict[str, dict] = {}
    seen_back: set[str] = set()

    def observe() -> None:
        """Watch the jobs each killed worker was running: when they were taken back, when they ran again."""
        for job_id, kill in list(pending.items()):
            job = Job.objects.filter(pk=job_id).values("status", "worker").first()
            on_dead = job["worker"].startswith(kill["worker"])
            if job_id not in seen_back and not (job["status"] == "running" and on_dead):
                taken_back.append(time.monotonic() - kill["at"])
                seen_back.add(job_id)
            if job["status"] in ("running", "succeeded") and not on_dead:
                recovery.append(time.monotonic() - kill["at"])
                del pending[job_id]

    submitted: list[str] = []
    refused = 0
    kills: list[dict] = []  # worker kills: when, and the jobs it was running then
    faults = Counter()
    interval = args.seconds / max(1, args.jobs)
    started = time.monotonic()
    next_fault = started + rng.uniform(3, 8)
    next_submit = started
    next_observe = started
    print(f"fault run: {args.jobs} jobs over {args.seconds:.0f}s of faults, seed {seed}", flush=True)

    while time.monotonic() - started < args.seconds or len(submitted) < args.jobs:
        now = time.monotonic()
        if len(submitted) < args.jobs and now >= next_submit:
            try:
                job = services.job_submit(user=user, kind="steps",
                                          params={"steps": 2, "step_seconds": rng.choice([0.01, 0.05, 0.2])}).job
                submitted.append(str(job.id))
            except (services.BrokerUnavailable, services.QueueFull):
                refused += 1
                admission.reset()
                time.sleep(0.2)
            next_submit = now + interval
        if now - started < args.seconds and now >= next_fault:
            fault = rng.choice(["kill_worker", "kill_worker", "stop_worker", "restart_redis", "kill_beat"])
            faults[fault] += 1
            if fault in ("kill_worker", "stop_worker"):
                name = rng.choice(["worker-a", "worker-b"])
                victim = processes[name]
                hostname = f"{name}-{counter[name]}@"
                running = list(Job.objects.filter(status=Job.Status.RUNNING, worker__startswith=hostname)
                               .values_list("pk", flat=True))
                if fault == "kill_worker":
                    common.support.kill_group(victim.popen)
                    kill = {"at": time.monotonic(), "worker": hostname, "jobs": [str(j) for j in running]}
                    kills.append(kill)
                    pending.update(dict.fromkeys(kill["jobs"], kill))
                else:
                    victim.stop(timeout=30)
                time.sleep(rng.uniform(0.5, 3))
                start(name, "worker", WORKER_QUEUES="default")
            elif fault == "restart_redis":
                redis.process.kill()
                redis.process.wait(10)
                time.sleep(rng.uniform(0.5, 3))
                common.support.RedisServer.start(redis)
                admission.reset()
            else:
                common.support.kill_group(processes["beat"].popen)
                time.sleep(rng.uniform(0.5, 3))
                start("beat", "beat")
            next_fault = time.monotonic() + rng.uniform(4, 12)
        if now >= next_observe:
            observe()
            next_observe = now + 0.25
        time.sleep(0.001)

    # The faults are over: wait for every job, and for each killed worker's jobs to run again.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        observe()
        left = Job.objects.filter(pk__in=submitted).exclude(status=Job.Status.SUCCEEDED).count()
        if not left and not pending:
            break
        time.sleep(0.2)
    finished_waiting = time.monotonic()

    succeeded_lines = Counter()
    for path in logs:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        succeeded_lines.update(re.findall(r"event=succeeded job=([0-9a-f-]{36})", text))
    statuses = dict(Job.objects.filter(pk__in=submitted).values_list("status").annotate(n=Count("id")))
    succeeded_ids = set(str(i) for i in Job.objects.filter(pk__in=submitted, status=Job.Status.SUCCEEDED)
                        .values_list("pk", flat=True))
    with_result = set(TaskResult.objects.filter(task_id__in=list(succeeded_ids), status="SUCCESS")
                      .values_list("task_id", flat=True))
    report = {
        "seed": seed, "jobs": len(submitted), "fault_seconds": args.seconds, "refused_while_redis_down": refused,
        "faults": dict(faults), "statuses": statuses,
        "lost": len(submitted) - len(succeeded_ids),
        "doubled": sum(1 for job_id in submitted if succeeded_lines[job_id] > 1),
        "results_missing": len(succeeded_ids - with_result),
        "jobs_running_on_killed_workers": sum(len(k["jobs"]) for k in kills),
        "taken_back_seconds_p50": round(common.percentile(taken_back, 50), 1) if taken_back else None,
        "taken_back_seconds_p99": round(common.percentile(taken_back, 99), 1) if taken_back else None,
        "recovery_seconds_p50": round(common.percentile(recovery, 50), 1) if recovery else None,
        "recovery_seconds_p99": round(common.percentile(recovery, 99), 1) if recovery else None,
        "recovery_not_seen": len(pending),
        "seconds_to_finish_after_faults": round(finished_waiting - started - args.seconds, 1),
    }
    print(json.dumps(report, indent=2), flush=True)
    if not common.quick():
        (common.RESULTS_DIR / "fault_run.json").write_text(json.dumps(report, indent=2) + "\n")

    for process in processes.values():
        process.popen.send_signal(signal.SIGTERM)
    for process in processes.values():
        process.stop(timeout=20)
    redis.stop()
    database.drop()


if __name__ == "__main__":
    main()
