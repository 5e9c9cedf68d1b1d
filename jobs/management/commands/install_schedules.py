"""`manage.py install_schedules`: create or update the platform's periodic tasks (idempotent)."""
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Install the platform's periodic tasks in django-celery-beat's tables."

    def handle(self, *args, **options):
        from jobs.schedules import install_schedules

        for name, created in install_schedules():
            if options["verbosity"] > 1:
                self.stdout.write(f"{'created' if created else 'updated'} {name}")
