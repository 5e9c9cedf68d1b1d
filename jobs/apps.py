"""App config: registers the built-in job kinds when Django starts (web, worker and beat alike), and
keeps the token cache honest."""
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

        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from .models import ApiToken
        from .token_cache import on_token_or_user_change

        # Cached token lookups must not outlive a revoked token or a deactivated user.
        for model in (ApiToken, get_user_model()):
            post_save.connect(on_token_or_user_change, sender=model, dispatch_uid=f"token-cache-{model.__name__}")
            post_delete.connect(on_token_or_user_change, sender=model, dispatch_uid=f"token-cache-del-{model.__name__}")
