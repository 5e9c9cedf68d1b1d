"""Dashboard URLs."""
from django.urls import path

from . import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    # The back-pressure middleware gates POSTs to this path (SUBMIT_PATHS): keep them in step.
    path("jobs/new", views.job_new, name="new"),
    path("jobs/<uuid:job_id>", views.job_detail, name="detail"),
    path("jobs/<uuid:job_id>/cancel", views.job_cancel, name="cancel"),
    path("jobs/<uuid:job_id>/retry", views.job_retry, name="retry"),
    path("queues", views.queues, name="queues"),
    path("stats", views.stats, name="stats"),
    path("tokens", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke", views.token_revoke, name="token_revoke"),
]
