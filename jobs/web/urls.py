"""Dashboard URLs."""
from django.urls import path

from . import operations_views, views

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
    path("queues/<str:queue>/pause", operations_views.queue_pause, name="queue_pause"),
    path("queues/<str:queue>/resume", operations_views.queue_resume, name="queue_resume"),
    path("operations/bulk", operations_views.bulk, name="bulk"),
    path("operations/audit", operations_views.audit, name="audit"),
    path("schedules", views.schedules, name="schedules"),
    path("schedules/new", views.schedule_new, name="schedule_new"),
    path("schedules/<int:schedule_id>", views.schedule_detail, name="schedule_detail"),
    # Run submits a job: a full queue answers 503 (BackPressureMiddleware), as the submit form's does.
    path("schedules/<int:schedule_id>/run", views.schedule_run, name="schedule_run"),
    path("schedules/<int:schedule_id>/pause", views.schedule_pause, name="schedule_pause"),
    path("schedules/<int:schedule_id>/resume", views.schedule_resume, name="schedule_resume"),
    path("timeline", views.timeline, name="timeline"),
    path("timeline/<int:reader_id>", views.timeline_of, name="timeline_of"),
    path("timeline/posts/<uuid:post_id>/delivery", views.post_delivery, name="post_delivery"),
    path("time-zone", views.set_time_zone, name="set_time_zone"),
]
