"""Dashboard URLs."""
from django.urls import path

from . import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("jobs/<uuid:job_id>", views.job_detail, name="detail"),
]
