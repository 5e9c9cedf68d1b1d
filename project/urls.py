"""URL configuration: dashboard, API, admin, health, metrics."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from jobs.web.api import api
from jobs.web.health import healthz
from jobs.web.metrics_view import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("jobs.web.urls")),
]
