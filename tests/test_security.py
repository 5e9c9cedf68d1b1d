"""Security: who may reach what (API, dashboard, admin, Flower), CSRF, tokens, production settings, secrets."""
import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, reverse

from jobs import services
from jobs.models import ApiToken, Job
from jobs.web.urls import urlpatterns as dashboard_urls
from tests.conftest import ApiClient
from tests.support import BASE_DIR, LOG_DIR, database_url_for_subprocess, free_port, wait_for

pytestmark = pytest.mark.django_db

SAMPLE_ARGS = {"job_id": uuid.UUID("0d4b8f7e-4c1f-4a55-9a43-1b6c2f8f0e11"), "token_id": 1, "queue": "default",
               "schedule_id": 1, "reader_id": 1, "post_id": uuid.UUID("5b7c1a2e-9d3f-4e8a-b6c4-2f1e0d9c8b7a")}


def api_operations(client) -> list[tuple[str, str]]:
    schema = client.get("/api/openapi.json").json()
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")]


def csrf_free(html: bytes) -> bytes:
    """A page without its CSRF tokens, which are masked afresh on every response."""
    return re.sub(rb'(csrfmiddlewaretoken" value=|csrf-token" content=|"X-CSRFToken": )"[^"]+"', rb"\1''", html)


# --- The API ------------------------------------------------------------------------------


def test_every_api_operation_refuses_requests_without_a_valid_token(client, user, django_user_model):
    job = services.job_submit(user=user, kind="noop").job
    revoked, revoked_plain = services.api_token_create(user=user)
    services.api_token_revoke(token=revoked)
    inactive = django_user_model.objects.create_user(username="gone", password="gone-password-1", is_active=False)
    _, inactive_plain = services.api_token_create(user=inactive)
    _, good = services.api_token_create(user=user)
    credentials = {
        "none": {},
        "unknown token": {"HTTP_AUTHORIZATION": "Bearer jpt_" + secrets.token_urlsafe(32)},
        "revoked token": {"HTTP_AUTHORIZATION": f"Bearer {revoked_plain}"},
        "inactive user's token": {"HTTP_AUTHORIZATION": f"Bearer {inactive_plain}"},
        "token in the wrong scheme": {"HTTP_AUTHORIZATION": f"Basic {good}"},
        "token with a character changed": {"HTTP_AUTHORIZATION": f"Bearer {good[:-1]}{'A' if good[-1] != 'A' else 'B'}"},
    }
    operations = api_operations(client)
    assert len(operations) >= 7
    for method, path in operations:
        url = path.replace("{job_id}", str(job.id))
        for label, headers in credentials.items():
            if method == "GET":
                response = client.get(url, **headers)
            else:
                response = client.post(url, json.dumps({"kind": "noop"}), content_type="application/json", **headers)
            assert response.status_code == 401, (method, url, label, response.status_code)
            assert str(job.id) not in response.content.decode(), "a refusal shows nothing of the job"
    assert Job.objects.count() == 1 and Job.objects.get().status == Job.Status.QUEUED


def test_a_token_client_meets_401_with_a_challenge_never_csrf(user):
    """What a real HTTP client sees (CSRF checks on, as in production): 401 and WWW-Authenticate."""
    job = services.job_submit(user=user, kind="noop").job
    _, good = services.api_token_create(user=user)
    client = Client(enforce_csrf_checks=True)
    for header in (None, "Bearer jpt_wrong", f"Basic {good}", f"Token {good}", "Bearer", "garbage"):
        headers = {"HTTP_AUTHORIZATION": header} if header is not None else {}
        for url in ("/api/jobs", f"/api/jobs/{job.id}/cancel", f"/api/jobs/{job.id}/retry"):
            response = client.post(url, json.dumps({"kind": "noop"}), content_type="application/json", **headers)
            assert response.status_code == 401, (header, url, response.content)
            assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert client.post("/api/jobs", json.dumps({"kind": "noop"}), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {good}").status_code == 202


def test_no_credential_a_client_sends_reaches_a_log(user, caplog, settings):
    import logging

    settings.DEBUG = True  # where django-ninja's own bearer class logged unexpected schemes
    _, good = services.api_token_create(user=user)
    secret = secrets.token_urlsafe(16)
    headers = [f"Basic {secret}", f"Token {good}", f"Bearer {secret}", f"{secret}", f"Digest {secret}=="]
    client = Client(enforce_csrf_checks=True)
    with caplog.at_level(logging.DEBUG):
        for header in headers:
            client.post("/api/jobs", json.dumps({"kind": "noop"}), content_type="application/json",
                        HTTP_AUTHORIZATION=header)
            client.get("/api/jobs", HTTP_AUTHORIZATION=header)
            client.get("/metrics", HTTP_AUTHORIZATION=header)
    logged = "\n".join(r.getMessage() + repr(r.__dict__.get("args")) for r in caplog.records)
    assert logged, "the requests were logged at all"
    assert secret not in logged and good not in logged


def test_session_login_on_the_api_needs_the_csrf_token_for_writes(user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    job = services.job_submit(user=user, kind="noop").job
    assert browser.get("/api/jobs").status_code == 200
    for url, body in (("/api/jobs", {"kind": "noop"}), (f"/api/jobs/{job.id}/cancel", {})):
        assert browser.post(url, json.dumps(body), content_type="application/json").status_code == 403, url
    assert Job.objects.count() == 1 and Job.objects.get().status == Job.Status.QUEUED

    browser.get(reverse("jobs:new"))  # sets the CSRF cookie, as the dashboard's pages do
    token = browser.cookies["csrftoken"].value
    response = browser.post("/api/jobs", json.dumps({"kind": "noop"}), content_type="application/json",
                            HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202


def test_another_users_job_answers_exactly_like_a_job_that_does_not_exist(api_for, user, other_user):
    alice, bob = api_for(user), api_for(other_user)
    theirs = alice.post("/api/jobs", {"kind": "noop"}).json()["id"]
    missing = str(uuid.uuid4())
    for action in ("", "/cancel", "/retry"):
        request = bob.get if not action else bob.post
        seen, absent = request(f"/api/jobs/{theirs}{action}"), request(f"/api/jobs/{missing}{action}")
        assert seen.status_code == absent.status_code == 404, action
        assert seen.content == absent.content, action
    listed = bob.get("/api/jobs", kind="noop").json()
    assert listed == {"items": [], "count": 0}
    assert Job.objects.get(pk=theirs).status == Job.Status.QUEUED


# --- The dashboard ------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [p for p in dashboard_urls if isinstance(p, URLPattern)], ids=lambda p: p.name)
@pytest.mark.parametrize("method", ["get", "post"])
def test_every_dashboard_url_sends_anonymous_visitors_to_the_login(client, pattern, method):
    url = reverse(f"jobs:{pattern.name}", kwargs={k: SAMPLE_ARGS[k] for k in pattern.pattern.converters})
    response = getattr(client, method)(url)
    assert response.status_code == 302, url
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_another_users_job_pages_look_exactly_like_a_missing_job(client, user, other_user):
    theirs = services.job_submit(user=other_user, kind="noop").job
    missing = uuid.uuid4()
    client.force_login(user)
    for name, method, headers in (("jobs:detail", "get", {}), ("jobs:detail", "get", {"HTTP_HX_REQUEST": "true"}),
                                  ("jobs:cancel", "post", {}), ("jobs:retry", "post", {})):
        seen = getattr(client, method)(reverse(name, args=[theirs.id]), **headers)
        absent = getattr(client, method)(reverse(name, args=[missing]), **headers)
        assert seen.status_code == absent.status_code == 404, name
        assert csrf_free(seen.content).replace(str(theirs.id).encode(), b"ID") == \
            csrf_free(absent.content).replace(str(missing).encode(), b"ID"), name
    # Searching by their id's prefix finds what searching for nothing finds.
    found = client.get(reverse("jobs:list"), {"q": str(theirs.id)[:8]}).content
    nothing = client.get(reverse("jobs:list"), {"q": str(missing)[:8]}).content
    assert csrf_free(found).replace(str(theirs.id)[:8].encode(), b"Q") == \
        csrf_free(nothing).replace(str(missing)[:8].encode(), b"Q")
    theirs.refresh_from_db()
    assert theirs.status == Job.Status.QUEUED


def test_csrf_is_enforced_on_login_logout_token_revocation_and_admin_forms(user, admin_user):
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post(reverse("login"), {"username": "alice", "password": "alice-password-1"}).status_code == 403
    assert anonymous.post("/admin/login/", {"username": "admin", "password": "password"}).status_code == 403

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    token, plain = services.api_token_create(user=user)
    assert browser.post(reverse("jobs:token_revoke", args=[token.id])).status_code == 403
    assert browser.post(reverse("logout")).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None and browser.get(reverse("jobs:list")).status_code == 200

    superuser = Client(enforce_csrf_checks=True)
    superuser.force_login(admin_user)
    job = services.job_submit(user=user, kind="noop").job
    response = superuser.post("/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.id)]})
    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED


def test_the_admin_is_for_staff_only(client, user, staff_user):
    job = services.job_submit(user=user, kind="noop").job
    for visitor in (None, user):
        browser = Client()
        if visitor is not None:
            browser.force_login(visitor)
        for url in ("/admin/", "/admin/jobs/job/", f"/admin/jobs/job/{job.id}/change/", "/admin/auth/user/",
                    "/admin/jobs/apitoken/", "/admin/django_celery_beat/periodictask/"):
            response = browser.get(url)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), (visitor, url)
        response = browser.post("/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.id)]})
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    # The admin's own login refuses a non-staff user with the right password.
    refused = Client().post("/admin/login/?next=/admin/", {"username": "alice", "password": "alice-password-1"})
    assert refused.status_code == 200 and b"staff account" in refused.content
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED

    staff = Client()
    staff.force_login(staff_user)
    assert staff.get("/admin/").status_code == 200


# --- Content-Security-Policy --------------------------------------------------------------

POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}


def policy_of(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy")
    assert header, "no Content-Security-Policy header"
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def test_every_kind_of_page_and_answer_carries_the_content_security_policy(client, api, user, admin_user, settings):
    job = services.job_submit(user=user, kind="noop").job
    alice = Client()
    alice.force_login(user)
    superuser = Client()
    superuser.force_login(admin_user)
    anonymous = Client()
    responses = {
        "login page": anonymous.get(reverse("login")),
        "job list": alice.get(reverse("jobs:list")),
        "job list, live part": alice.get(reverse("jobs:list"), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="jobs-panel"),
        "job page": alice.get(reverse("jobs:detail", args=[job.id])),
        "missing job page": alice.get(reverse("jobs:detail", args=[uuid.uuid4()])),
        "submit form": alice.get(reverse("jobs:new")),
        "queues": alice.get(reverse("jobs:queues")),
        "tokens": alice.get(reverse("jobs:tokens")),
        "stats": alice.get(reverse("jobs:stats")),
        "API": api.get("/api/jobs"),
        "API, no token": anonymous.get("/api/jobs"),
        "API schema": anonymous.get("/api/openapi.json"),
        "API docs": anonymous.get("/api/docs"),
        "API, body too large (middleware)": api.post("/api/jobs", raw="x" * (settings.JOBS_MAX_BODY_BYTES + 1)),
        "admin login": anonymous.get("/admin/login/"),
        "admin job list": superuser.get("/admin/jobs/job/"),
        "admin job": superuser.get(f"/admin/jobs/job/{job.id}/change/"),
        "admin schedule form": superuser.get("/admin/django_celery_beat/periodictask/add/"),
        "health": anonymous.get("/healthz"),
    }
    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses["API, no token"] == 401 and statuses["missing job page"] == 404
    assert statuses["API, body too large (middleware)"] == 413
    assert statuses["admin job list"] == statuses["admin job"] == statuses["admin schedule form"] == 200
    for name, response in responses.items():
        assert policy_of(response) == POLICY, name


def test_pages_carry_no_inline_script_or_style(client, user, admin_user):
    """What the policy would block, caught here before a browser has to: every script and stylesheet
    comes from a file; no event handler or style attribute, no <style> element."""
    job = services.job_submit(user=user, kind="steps", params={"steps": 4}).job
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, progress_done=1, progress_total=4)
    alice = Client()
    alice.force_login(user)
    superuser = Client()
    superuser.force_login(admin_user)
    pages = [alice.get(url) for url in (reverse("jobs:list"), reverse("jobs:detail", args=[job.id]),
                                        reverse("jobs:new") + "?kind=steps", reverse("jobs:queues"),
                                        reverse("jobs:tokens"), reverse("jobs:stats"), "/api/docs")]
    pages += [superuser.get(url) for url in ("/admin/jobs/job/", "/admin/django_celery_beat/periodictask/add/")]
    for response in pages:
        assert response.status_code == 200
        html = response.content.decode()
        where = response.request["PATH_INFO"]
        for tag, body in re.findall(r"(<script\b[^>]*>)(.*?)</script>", html, re.S):
            # Data for a script (json_script, Swagger UI's settings) is no code to run.
            assert "src=" in tag and not body.strip() or 'type="application/json"' in tag, (where, tag, body[:200])
        assert not re.search(r"<[^>]+\sstyle=", html), where
        assert not re.search(r"<[^>]+\son[a-z]+=", html), where
        assert "<style" not in html, where


# --- Tokens -------------------------------------------------------------------------------


def test_tokens_are_kept_only_as_hashes_and_revoking_one_locks_the_api_at_once(client, user):
    out = StringIO()
    call_command("create_token", "alice", stdout=out)
    plain = out.getvalue().strip()
    assert re.fullmatch(r"jpt_[A-Za-z0-9_-]{43}", plain)
    stored = ApiToken.objects.get(user=user)
    row = " ".join(str(value) for value in ApiToken.objects.filter(pk=stored.pk).values().get().values())
    assert plain not in row and plain[12:] not in row, "the token itself is not in the database"
    assert stored.key_hash == hashlib.sha256(plain.encode()).hexdigest()

    api = ApiClient(client, plain)
    assert api.get("/api/jobs").status_code == 200
    browser = Client()
    browser.force_login(user)
    assert browser.post(reverse("jobs:token_revoke", args=[stored.id])).status_code == 302
    assert api.get("/api/jobs").status_code == 401
    assert api.post("/api/jobs", {"kind": "noop"}).status_code == 401


# --- Flower -------------------------------------------------------------------------------


@pytest.fixture
def flower(redis_server):
    port = free_port()
    password = secrets.token_urlsafe(16)
    env = {**os.environ, "CELERY_BROKER_URL": redis_server.url, "REDIS_URL": redis_server.url,
           "FLOWER_BASIC_AUTH": f"ops:{password}", "PYTHONUNBUFFERED": "1"}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / f"flower-{port}.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "flower", "--address=127.0.0.1", f"--port={port}"],
        cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    import httpx

    def answering():
        if process.poll() is not None:
            pytest.fail(f"flower exited with {process.returncode}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answering, timeout=60, interval=0.2, message="flower to answer")
        yield f"http://127.0.0.1:{port}", ("ops", password)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def test_flower_answers_401_without_its_credentials(flower):
    import httpx

    base, (user, password) = flower
    wrong = "Basic " + base64.b64encode(f"{user}:not-{password}".encode()).decode()
    paths = ["/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks", "/api/task/types"]
    with httpx.Client(base_url=base, timeout=15) as http:
        for path in paths:
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers={"Authorization": wrong}).status_code == 401, path
        # Control endpoints too: shutting a worker down needs the credentials.
        assert http.post("/api/worker/shutdown/anyone").status_code == 401
        for path in ("/", "/api/workers"):
            assert http.get(path, auth=(user, password)).status_code == 200, path


# --- Production settings and the repository ---------------------------------------------


def production_env(**extra) -> dict:
    return {**os.environ, "DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": "jobs.example.com", **extra}


def test_manage_py_check_deploy_reports_nothing_with_production_settings():
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"], cwd=BASE_DIR,
                          env=production_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout, done.stdout + done.stderr


def test_production_refuses_to_start_without_a_secret_key():
    env = production_env()
    del env["DJANGO_SECRET_KEY"]
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "DJANGO_SECRET_KEY" in done.stderr


LOCAL_PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
missing = Client().get("/no-such-page/")
print(json.dumps({"debug": settings.DEBUG, "status": missing.status_code, "lists_urls": b"URLconf" in missing.content,
                  "redirect": settings.SECURE_SSL_REDIRECT, "key": settings.SECRET_KEY}))
"""


def test_a_local_run_has_debug_off_and_a_key_of_its_own_kept_across_restarts(tmp_path):
    """`make run` with nothing configured: no debug pages listing every URL, plain HTTP on loopback, and a
    generated key (in var/, readable by its owner only) instead of one written in the code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    env["JOBS_VAR_DIR"] = str(tmp_path)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", LOCAL_PROBE], cwd=BASE_DIR, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["debug"] is False and first["status"] == 404 and not first["lists_urls"]
    assert first["redirect"] is False  # loopback names only: plain HTTP
    assert first["key"] == second["key"] and len(first["key"]) >= 50
    assert (tmp_path / "secret-key").stat().st_mode & 0o077 == 0


COOKIE_PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
# The hashed-name manifest comes from collectstatic at deploy time; the cookies are what is checked here.
settings.STORAGES = {**settings.STORAGES,
                     "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
browser = Client(HTTP_HOST="jobs.example.com")
plain_http = browser.get("/accounts/login/")
page = browser.get("/accounts/login/", secure=True)
login = browser.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}, secure=True)
csrf, session = page.cookies["csrftoken"], login.cookies["sessionid"]
print(json.dumps({
    "http": [plain_http.status_code, plain_http.get("Location")],
    "login": login.status_code,
    "csrf": {"secure": bool(csrf["secure"]), "samesite": csrf["samesite"]},
    "session": {"secure": bool(session["secure"]), "httponly": bool(session["httponly"]),
                "samesite": session["samesite"]},
    "hsts": page.get("Strict-Transport-Security"),
}))
"""


@pytest.mark.django_db(transaction=True)
def test_production_cookies_are_secure_and_http_is_redirected(user):
    done = subprocess.run([sys.executable, "-c", COOKIE_PROBE], cwd=BASE_DIR, capture_output=True, text=True,
                          env=production_env(DATABASE_URL=database_url_for_subprocess()), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["http"] == [301, "https://jobs.example.com/accounts/login/"]
    assert seen["login"] == 302, "the login itself worked"
    assert seen["csrf"] == {"secure": True, "samesite": "Lax"}
    assert seen["session"] == {"secure": True, "httponly": True, "samesite": "Lax"}
    assert seen["hsts"] and seen["hsts"].startswith("max-age=")


SECRET_PATTERNS = {
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "AWS access key": r"\bAKIA[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "Slack token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "Stripe live key": r"\b[sr]k_live_[A-Za-z0-9]{16,}",
    "an API token of ours": r"\bjpt_[A-Za-z0-9_-]{43}\b",
    # A value given to one of the platform's secrets, other than a reference or a placeholder.
    "a configured secret": r"(?m)\b(DJANGO_SECRET_KEY|FLOWER_BASIC_AUTH|DJANGO_SUPERUSER_PASSWORD)[ \t]*[=:][ \t]*"
                           r"['\"]?(?![$.]|change-me|collectstatic-only|user:password)[^\s'\"]{8,}['\"]?[ \t]*$",
    "a hard-coded Django key": r"\bSECRET_KEY\s*=\s*['\"][^'\"]{20,}['\"]|django-insecure-[a-z0-9]",
    "a password in a URL": r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?P<password>[^@\s/'\"{}$<>]{3,})@",
}
# What documentation and tests put in URLs to show their shape.
PLACEHOLDER_PASSWORDS = {"password", "guest", "pass", "***"}


def test_no_secret_is_committed():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=BASE_DIR,
                            capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("not a Git work tree")
    files = [name for name in listed.stdout.decode().split("\0") if name]
    assert ".env" not in files and not any(name.startswith("var/") for name in files)
    found = []
    for name in files:
        path = BASE_DIR / name
        if not path.is_file() or path.stat().st_size > 2_000_000 or name.startswith("static/vendor/"):
            continue
        text = path.read_text(errors="ignore")
        for what, pattern in SECRET_PATTERNS.items():
            for match in re.finditer(pattern, text):
                if match.groupdict().get("password") in PLACEHOLDER_PASSWORDS:
                    continue
                found.append(f"{name}: {what}: {match.group(0)[:40]}")
    assert not found, "\n".join(found)
