"""The Celery app, configured from the CELERY_* Django settings."""
import os
from collections.abc import Iterator, Mapping

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class DjangoCelerySettings(Mapping):
    """The CELERY_* Django settings as a plain dict, read on first use.

    Celery looks its settings up on every publish and every task. Read straight from Django's
    settings object, each one the project leaves at Celery's default costs an AttributeError:
    about a seventh of a publish. Settings are fixed once the process runs, so a copy is exact;
    code that changes a CELERY_* setting later (tests) must also set it on `app.conf`.
    """

    def __init__(self):
        self._values: dict | None = None

    def _load(self) -> dict:
        if self._values is None:
            from django.conf import settings

            self._values = {name: getattr(settings, name) for name in dir(settings) if name.startswith("CELERY_")}
        return self._values

    def __getitem__(self, key: str):
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


app = Celery("project")
app.config_from_object(DjangoCelerySettings(), namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _namespaced_names_are_current(sender, **kwargs):
    """CELERY_RESULT_BACKEND and the like are the current names under the CELERY namespace.

    A worker warns that they are deprecated unless its settings come from the string
    "django.conf:settings" (Celery's own workaround for namespaced Django settings); they come
    from the copy above, so the warning would be a false one.
    """
    sender.conf.deprecated_settings = set()
