"""`manage.py start` (what `make run` calls): prepare the database, then run every process of the Procfile, and
stop them in order on Ctrl-C."""
import os
import secrets
import signal
import sys
import threading
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer


class Command(BaseCommand):
    help = "Migrate, create the admin user and schedules, then start Redis, web, worker, beat and Flower."

    def handle(self, *args, **options):
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensure_admin")
        call_command("install_schedules", verbosity=0)
        flower_auth = self._flower_auth()

        procfile = parse_procfile((settings.BASE_DIR / "Procfile").read_text())
        processes = dict(procfile.processes)
        if not settings.REDIS_BUNDLED:
            processes.pop("redis")  # REDIS_URL names a Redis of the user's own

        env = dict(os.environ)
        env["FLOWER_BASIC_AUTH"] = flower_auth
        env["JOBS_VAR_DIR"] = str(settings.VAR_DIR)
        env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        user, _, password = flower_auth.partition(":")
        self.stdout.write(
            f"\nDashboard  http://127.0.0.1:{settings.WEB_PORT}/   (admin: /admin/, API docs: /api/docs)\n"
            f"Flower     {settings.FLOWER_URL}   (user {user}, password {password})\n"
            f"Redis      {settings.REDIS_URL}\n"
            f"Ctrl-C stops everything: running jobs get {settings.JOBS_SHUTDOWN_GRACE} s to finish, the rest are "
            "handed back.\n\n"
        )
        self.stdout.flush()
        manager = OrderedStopManager(Printer(sys.stdout), grace=settings.JOBS_SHUTDOWN_GRACE)
        for name, command in processes.items():
            manager.add_process(name, command, env=env, cwd=str(settings.BASE_DIR))
        manager.loop()
        sys.exit(manager.returncode)

    def _flower_auth(self) -> str:
        if settings.FLOWER_BASIC_AUTH:
            return settings.FLOWER_BASIC_AUTH
        path = settings.VAR_DIR / "flower-auth"
        if not path.exists():
            path.write_text(f"admin:{secrets.token_urlsafe(12)}\n")
            path.chmod(0o600)
        return path.read_text().strip()


WORKERS = ("worker", "housekeeping")
LAST = ("redis",)


class OrderedStopManager(Manager):
    """honcho's manager, stopping in order rather than all at once (Ctrl-C, or any process exiting):

    1. the workers get SIGTERM, a warm shutdown: they take no new message, hand the messages they
       hold back to Redis, and let running jobs finish;
    2. after `grace` seconds, those still running get SIGQUIT, a cold shutdown: Celery stops the runs,
       and each is recorded at once on its Job as handed back (`retrying`, its attempt given back),
       so that it runs again as soon as a worker is back;
    3. then web, beat and Flower; Redis last, so that the workers could still hand messages back.

    Only main processes are signalled (the Procfile `exec`s each command): honcho signals whole process
    groups, and a Celery pool process dies at once on SIGTERM, which would kill the running jobs.
    """

    def __init__(self, printer, *, grace: float):
        super().__init__(printer)
        self.grace = grace
        self._stopped_in_order = threading.Event()

    def terminate(self):
        if self._terminating:
            return
        self._terminating = True
        threading.Thread(target=self._stop_in_order, name="ordered-stop", daemon=True).start()

    def kill(self):
        # honcho kills everything 5 s after the first exit; the ordered stop has its own deadlines.
        if self._stopped_in_order.is_set():
            super().kill()

    def _stop_in_order(self) -> None:
        workers = [name for name in WORKERS if name in self._processes]
        self._signal(workers, signal.SIGTERM)
        if not self._wait(workers, self.grace):
            self._system_print(f"jobs still running after {self.grace}s: stopping them (they are handed back)\n")
            # The housekeeping worker's threads cannot be stopped: its short tasks are waited for instead.
            self._signal([name for name in workers if name != "housekeeping"], signal.SIGQUIT)
            if not self._wait(workers, 30):
                self._signal(workers, signal.SIGKILL, group=True)
        others = [name for name in self._processes if name not in workers and name not in LAST]
        for group in (others, [name for name in LAST if name in self._processes]):
            self._signal(group, signal.SIGTERM)
            if not self._wait(group, 10):
                self._signal(group, signal.SIGKILL, group=True)
        self._stopped_in_order.set()

    def _running(self, names) -> list[str]:
        return [name for name in names if "returncode" not in self._processes[name]
                and self._processes[name].get("pid")]

    def _signal(self, names, sig: int, *, group: bool = False) -> None:
        for name in self._running(names):
            pid = self._processes[name]["pid"]
            self._system_print(f"sending {signal.Signals(sig).name} to {name} (pid {pid})\n")
            try:
                (os.killpg if group else os.kill)(pid, sig)
            except ProcessLookupError:
                pass

    def _wait(self, names, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._running(names):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True
