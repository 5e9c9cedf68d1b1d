"""App config: registers the built-in job kinds when Django starts (web, worker and beat alike)."""
from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from importlib import import_module

        from django.conf import settings

        from . import kinds, periodic  # noqa: F401 - registering the kinds makes their Celery tasks

        for module in settings.JOBS_KIND_MODULES:
            import_module(module)
