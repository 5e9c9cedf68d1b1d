"""App config: when Django starts (web, worker and beat alike), register the job kinds, make their Celery
tasks, hang the admin on, and keep cached token lookups honest."""
from importlib import import_module

from django.utils.module_loading import autodiscover_modules

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from . import kinds, tasks  # noqa: F401 - the built-in kinds, and the housekeeping tasks
        from .models import ApiToken
        from .services import forget_tokens
        from .web import admin  # noqa: F401 - the admin lives with the rest of the web layer

        for module in settings.JOBS_KIND_MODULES:
            import_module(module)
        # Each app's tasks module, as Celery's autodiscovery does in workers: its `@task` functions become
        # kinds in every process, so that the dashboard and the API know them too.
        autodiscover_modules("tasks")
        tasks.register_kind_tasks()

        # Cached token lookups must not outlive a revoked token or a deactivated user.
        for model in (ApiToken, get_user_model()):
            post_save.connect(forget_tokens, sender=model, dispatch_uid=f"token-cache-{model.__name__}")
            post_delete.connect(forget_tokens, sender=model, dispatch_uid=f"token-cache-del-{model.__name__}")
