"""`manage.py start` (what `make run` calls): prepare the database, then run every process of the Procfile."""
import os
import secrets
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer


class Command(BaseCommand):
    help = "Migrate, create the admin user and schedules, then start Redis, web, worker, beat and Flower."

    def handle(self, *args, **options):
        settings.VAR_DIR.mkdir(exist_ok=True)
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
        env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        user, _, password = flower_auth.partition(":")
        self.stdout.write(
            f"\nDashboard  http://127.0.0.1:{settings.WEB_PORT}/   (admin: /admin/, API docs: /api/docs)\n"
            f"Flower     {settings.FLOWER_URL}   (user {user}, password {password})\n"
            f"Redis      {settings.REDIS_URL}\n"
            "Ctrl-C stops everything.\n\n"
        )
        self.stdout.flush()
        manager = Manager(Printer(sys.stdout))
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
