"""`manage.py ensure_admin`: create the admin user when there is none, and say how to log in."""
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create a superuser when none exists: DJANGO_SUPERUSER_USERNAME / _PASSWORD when set, "
        "else 'admin' with a generated password kept in var/admin-password."
    )

    def handle(self, *args, **options):
        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password"
        username = settings.DJANGO_SUPERUSER_USERNAME
        if User.objects.filter(is_superuser=True).exists():
            if password_file.exists() and not settings.DJANGO_SUPERUSER_PASSWORD:
                shown = (password_file.relative_to(settings.BASE_DIR) if password_file.is_relative_to(settings.BASE_DIR)
                         else password_file)
                self.stdout.write(f"Admin: {username} / password in {shown}")
            return
        password = settings.DJANGO_SUPERUSER_PASSWORD
        generated = password is None
        if generated:
            password = secrets.token_urlsafe(12)
            settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        User.objects.create_superuser(username=username, email="", password=password)
        shown = password if generated else "(from DJANGO_SUPERUSER_PASSWORD)"
        self.stdout.write(self.style.SUCCESS(f"Created admin user: {username} / {shown}"))
