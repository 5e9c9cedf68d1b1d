"""Settings for every process (web, worker, beat, Flower), read from the environment."""
import os
from pathlib import Path

import django
import environ
from csp.constants import NONE, SELF
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env beside manage.py is a convenience for local runs; the real environment wins.
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Local state of `make run`: the SQLite database, the bundled Redis, generated credentials, metrics.
VAR_DIR = Path(env("JOBS_VAR_DIR", default=str(BASE_DIR / "var")))

# Off unless asked for (DJANGO_DEBUG=true): `make run` starts gunicorn with generated credentials, and debug
# pages would show every URL and setting to whoever reaches the site.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
# Served under loopback names only (the default): `make run` on a developer's machine, plain HTTP. Any real
# host name in DJANGO_ALLOWED_HOSTS makes it a deployment: HTTPS enforced, a key required, hashed static files.
LOCAL_ONLY = set(ALLOWED_HOSTS) <= {"127.0.0.1", "localhost", "[::1]", "::1", "testserver"}


def _local_secret_key() -> str:
    """A key made on first use and kept in var/ (mode 600), so that sessions survive restarts."""
    path = VAR_DIR / "secret-key"
    if not path.exists():
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = env("DJANGO_SECRET_KEY", default=None) or (_local_secret_key() if LOCAL_ONLY else env("DJANGO_SECRET_KEY"))
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "csp",
    # django-ninja as an app: /api/docs then serves the Swagger UI files the package ships, not a CDN's.
    "ninja",
    "django_celery_results",
    "django_celery_beat",
    # Django's task API: built into Django 6; the django-tasks backport on 5.2.
    *(["django_tasks"] if django.VERSION < (6, 0) else []),
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Early, so that responses the middleware below answers with themselves carry the policy too.
    "csp.middleware.CSPMiddleware",
    "jobs.web.middleware.BodySizeLimitMiddleware",
    "jobs.web.middleware.ApiJsonErrorsMiddleware",
    "jobs.web.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: the refusal page of the dashboard's form needs the session, the user and the CSRF token.
    "jobs.web.middleware.BackPressureMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "jobs.web.context_processors.platform_links",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server read while workers write; IMMEDIATE takes the write lock at
        # BEGIN so that two writers queue on the busy timeout instead of failing mid-transaction.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        # Seconds a write waits for the lock before "database is locked".
        "timeout": env.float("DJANGO_SQLITE_TIMEOUT", default=20),
    }
    # A file, not memory, so that the workers and servers tests start can open it too.
    # Named per test run, so that two runs on one machine do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
# Web and workers keep their connection: opening one costs milliseconds (a server process on
# PostgreSQL; functions and PRAGMAs on SQLite). The health check drops one the server closed.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "jobs:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not (DEBUG or LOCAL_ONLY)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Local runs serve static files from the apps' folders (no collectstatic); deployments from STATIC_ROOT.
WHITENOISE_USE_FINDERS = DEBUG or LOCAL_ONLY

# --- Security (production) ------------------------------------------------------------
if not (DEBUG or LOCAL_ONLY):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    # Behind a TLS-terminating proxy, which tells us the original scheme.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Every page, the admin and /api/docs (Swagger UI from ninja's static files) included, runs only
# scripts and styles from files this site serves: no inline code, no style attributes, no eval.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        # data: for images given inline as data URIs (Swagger UI's stylesheet has a few); never scripts or styles.
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    },
}

# --- Redis and Celery -----------------------------------------------------------------
# Without REDIS_URL, `make run` starts a private redis-server on a unix socket under var/,
# so that it can never collide with a Redis the machine already runs.
BUNDLED_REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_BUNDLED = not env("REDIS_URL", default="")  # set but empty counts as unset
REDIS_URL = f"unix://{BUNDLED_REDIS_SOCKET}?db=0" if REDIS_BUNDLED else env("REDIS_URL")


def _kombu_url(redis_url: str) -> str:
    """Kombu spells a unix-socket Redis URL differently from redis-py."""
    return "redis+socket://" + redis_url.removeprefix("unix://") if redis_url.startswith("unix://") else redis_url


CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="") or _kombu_url(REDIS_URL)

# The longest hard time limit a kind may set. The Redis visibility timeout must exceed it:
# a message still unacknowledged after the visibility timeout is handed to another worker.
JOBS_MAX_TIME_LIMIT = env.int("JOBS_MAX_TIME_LIMIT", default=3600)
JOBS_VISIBILITY_TIMEOUT = env.int("JOBS_VISIBILITY_TIMEOUT", default=JOBS_MAX_TIME_LIMIT + 300)
# How often a worker looks for messages unacknowledged past the visibility timeout (their worker
# died). kombu scans only every 10th tick of 10 s by default, which adds up to 100 s to recovery.
JOBS_RESTORE_INTERVAL = env.int("JOBS_RESTORE_INTERVAL", default=10)
JOBS_PRIORITY_STEPS = list(range(10))

CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Same value in every process (web publishes, workers restore): see JOBS_MAX_TIME_LIMIT.
    "visibility_timeout": JOBS_VISIBILITY_TIMEOUT,
    # Ten priority levels, one Redis list each, so that priorities 0-9 are all distinct.
    "priority_steps": JOBS_PRIORITY_STEPS,
    "sep": ":",
    # Strict priority across a worker's queues rather than round robin.
    "queue_order_strategy": "priority",
    # One indexed ZRANGE per worker per interval; see JOBS_RESTORE_INTERVAL.
    "unacked_restore_interval": JOBS_RESTORE_INTERVAL,
    "unacked_restore_throttle": 1,
}

# Amazon SQS as the broker: CELERY_BROKER_URL=sqs:// (credentials from AWS's usual environment variables or
# the machine's role, never in the URL: Celery prints the URL's user name), or sqs://host:port for a server
# speaking SQS's API over plain HTTP (an emulator). Each platform queue is the SQS queue of its name with
# this prefix, created on first use; kombu's SQS transport, from the `celery[sqs]` extra (boto3, pycurl).
BROKER_IS_SQS = CELERY_BROKER_URL.startswith("sqs://")
JOBS_SQS_QUEUE_PREFIX = env("JOBS_SQS_QUEUE_PREFIX", default="jobs-")
# Empty: boto3's own choice (AWS_REGION / AWS_DEFAULT_REGION, the profile), else us-east-1.
JOBS_SQS_REGION = env("JOBS_SQS_REGION", default="")
# Long polling: a ReceiveMessage waits up to this long on SQS's side and returns as soon as a message comes,
# so an idle worker costs about one request per queue per 20 s (SQS's longest), and a message sent while a
# receive waits is delivered at once.
JOBS_SQS_WAIT_SECONDS = env.int("JOBS_SQS_WAIT_SECONDS", default=20)
JOBS_SQS_TRANSPORT_OPTIONS = {
    "queue_name_prefix": JOBS_SQS_QUEUE_PREFIX,
    "region": JOBS_SQS_REGION or None,
    # Set on the queues kombu creates (an existing queue keeps its own: change it on SQS too). SQS takes
    # 12 hours at most; a run longer than that gets its message back mid-run, and that copy is dropped at claim.
    "visibility_timeout": min(JOBS_VISIBILITY_TIMEOUT, 12 * 3600),
    "wait_time_seconds": JOBS_SQS_WAIT_SECONDS,
    # kombu's pause after an empty or failed receive, before the next long poll: 1 s (a message sent then
    # waits for it), so that an unreachable endpoint is asked once a second, not in a tight loop.
    "polling_interval": 1,
    # A depth check or a publish must not hang on an unreachable endpoint for botocore's 60 s; reads
    # outlast a long poll.
    "client-config": {"connect_timeout": 2, "read_timeout": JOBS_SQS_WAIT_SECONDS + 5,
                      "retries": {"mode": "standard", "max_attempts": 3}},
}
if BROKER_IS_SQS:
    CELERY_BROKER_TRANSPORT_OPTIONS = JOBS_SQS_TRANSPORT_OPTIONS
    # kombu's SQS transport with a workaround: see jobs.infra.sqs.
    CELERY_BROKER_TRANSPORT = "jobs.infra.sqs:Transport"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # processes start before Redis is up under honcho
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # a worker waits out a broker outage instead of exiting
# django-celery-results' database backend, except that it leaves the rows of platform jobs to the
# services: nothing Celery writes (RETRY, REVOKED, a cancel's FAILURE) replaces a job's result.
CELERY_RESULT_BACKEND = "jobs.infra.results:LedgerResultBackend"
CELERY_RESULT_EXTENDED = True  # store task name, args and worker with each result
CELERY_TASK_TRACK_STARTED = True  # tasks other than jobs show STARTED (jobs record `running` on the Job)
CELERY_TASK_ACKS_LATE = True  # acknowledge after the task ran: a worker killed mid-job loses nothing
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # a pool child killed mid-job requeues its message
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a worker holds no more messages than it runs
# Celery's Django fixup closes the database connection before and after every task (a reconnect
# per task); workers instead recycle it per task as Django does per request (jobs/tasks.py), and
# the fixup only every this many tasks.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Stop running tasks when the broker connection is lost: their messages come back anyway,
# and a second copy must not run beside the first.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Celery's consumer, but one that lives through a lost Redis connection (see jobs.tasks.JobsConsumer).
CELERY_WORKER_CONSUMER = "jobs.tasks:JobsConsumer"
CELERY_TASK_SERIALIZER = "json"  # JSON only: no pickle, messages readable by any client
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = env.int("JOBS_DEFAULT_SOFT_TIME_LIMIT", default=300)  # a task may clean up
CELERY_TASK_TIME_LIMIT = env.int("JOBS_DEFAULT_TIME_LIMIT", default=360)  # then its process is killed
CELERY_TASK_DEFAULT_QUEUE = "default"
# Housekeeping (publish-due, recovery, statistics, retention) goes to a queue of its own, consumed by a
# worker of its own under `make run`: it never counts toward users' depth and never waits behind jobs.
JOBS_PLATFORM_QUEUE = "platform"
CELERY_TASK_ROUTES = {"jobs.periodic.*": {"queue": JOBS_PLATFORM_QUEUE}, "celery.backend_cleanup": {
    "queue": JOBS_PLATFORM_QUEUE}}
CELERY_TASK_DEFAULT_PRIORITY = 5  # the middle of 0-9, so that jobs can go above or below
CELERY_WORKER_SEND_TASK_EVENTS = True  # Flower shows tasks live
# Celery's default, off: the task-sent event is a second message on every publish, 30-40% of a
# submission's publishing cost, and all it adds is Flower's "sent" state before "received".
CELERY_TASK_SEND_SENT_EVENT = env.bool("CELERY_TASK_SEND_SENT_EVENT", default=False)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "jobs.beat:SingleBeatScheduler"  # the database scheduler, one beat at a time (Redis lock)
CELERY_RESULT_EXPIRES = None  # retention is ours (JOBS_RETENTION_DAYS), not Celery's default day
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep our log format in worker logs

# --- The platform ---------------------------------------------------------------------
JOBS_QUEUES = ["default", "cpu", "io"]
# Every queue declared, so that what lists queues (Flower's broker page) shows those no worker consumes.
# Each is the queue Celery would create on first use (a direct exchange of its own name, routing key the
# name, no queue arguments): the same Redis lists and bindings, and no x-max-priority on RabbitMQ. The
# ten priorities on Redis come from the transport's priority_steps, not from the queue.
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name) for name in [*JOBS_QUEUES, JOBS_PLATFORM_QUEUE]]
# Django's task API runs on the platform: a `@task` function is a job kind (jobs/task_backend.py).
TASKS = {
    "default": {
        "BACKEND": "jobs.task_backend.PlatformTaskBackend",
        "QUEUES": JOBS_QUEUES,
        # Runs a task may take: a run lost with its worker runs again; an exception it raises fails it at once.
        "OPTIONS": {"MAX_ATTEMPTS": env.int("JOBS_TASK_MAX_ATTEMPTS", default=3)},
    },
}
# A project's own Celery tasks to record in the ledger as Celery runs them (shell-style patterns of task names,
# e.g. "myapp.tasks.*"): the dashboard shows them, keeps their history, and can run one again or cancel it.
JOBS_TRACK_CELERY_TASKS = env.list("JOBS_TRACK_CELERY_TASKS", default=[])
# Modules with a project's own job kinds, imported at start-up beside the built-in ones.
JOBS_KIND_MODULES = env.list("JOBS_KIND_MODULES", default=[])
JOBS_QUEUE_LIMIT = env.int("JOBS_QUEUE_LIMIT", default=10_000)
# Optional per-queue limits, e.g. JOBS_QUEUE_LIMITS=cpu=500,io=2000
JOBS_QUEUE_LIMITS = {k: int(v) for k, v in env.dict("JOBS_QUEUE_LIMITS", default={}).items()}
# Submissions are accepted again once the depth falls below this share of the limit.
JOBS_QUEUE_LOW_WATERMARK = env.float("JOBS_QUEUE_LOW_WATERMARK", default=0.8)
# How long one process trusts a depth reading; see jobs/services/admission.py for the overshoot it allows.
# On SQS a reading is one request per queue, billed per request, of counts that are approximate anyway:
# 1 s there (away from the limit, 3 requests a second per web process rather than 30).
JOBS_QUEUE_DEPTH_CACHE_SECONDS = env.float("JOBS_QUEUE_DEPTH_CACHE_SECONDS", default=1.0 if BROKER_IS_SQS else 0.1)
# API token lookups are kept per process this many seconds: a revoked token or a deactivated user
# stops working in every process within it (at once in the one that changed it). 0: no cache.
JOBS_TOKEN_CACHE_SECONDS = env.float("JOBS_TOKEN_CACHE_SECONDS", default=1.0)
# Bounds of the Retry-After a refusal gives; with no drain observed (workers stopped), the upper one.
JOBS_RETRY_AFTER_MAX = env.int("JOBS_RETRY_AFTER_MAX", default=60)
JOBS_MAX_BODY_BYTES = env.int("JOBS_MAX_BODY_BYTES", default=256 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = JOBS_MAX_BODY_BYTES
# A queued job whose message is not in the broker this long after publishing is published again.
JOBS_RECOVERY_AFTER_SECONDS = env.int("JOBS_RECOVERY_AFTER_SECONDS", default=60)
# A running job's lease: its worker renews it every JOBS_HEARTBEAT_SECONDS while the run lives, and a
# job whose lease lapsed (its worker died) is taken back and published again at once. So a worker's
# death costs its jobs at most the lease plus one heartbeat, whatever their time limits.
JOBS_LEASE_SECONDS = env.int("JOBS_LEASE_SECONDS", default=20)
JOBS_HEARTBEAT_SECONDS = env.float("JOBS_HEARTBEAT_SECONDS", default=5.0)
# What `make run` gives running jobs on Ctrl-C before it stops them and hands them back.
JOBS_SHUTDOWN_GRACE = env.int("JOBS_SHUTDOWN_GRACE", default=10)
# How long a worker keeps trying to claim or finish a job while the database is down (a restart
# or failover), before leaving it to recovery. Counts against the kind's time limit.
JOBS_DB_RETRY_SECONDS = env.int("JOBS_DB_RETRY_SECONDS", default=60)
JOBS_RETENTION_DAYS = env.int("JOBS_RETENTION_DAYS", default=30)
# user:password for Flower; `make run` generates one (kept in var/) when unset.
FLOWER_BASIC_AUTH = env("FLOWER_BASIC_AUTH", default=None)
WEB_PORT = env.int("WEB_PORT", default=8000)
FLOWER_URL = env("FLOWER_URL", default=f"http://127.0.0.1:{env.int('FLOWER_PORT', default=5555)}/")
# The admin user `make run` creates when there is none (a generated password when unset).
DJANGO_SUPERUSER_USERNAME = env("DJANGO_SUPERUSER_USERNAME", default="admin")
DJANGO_SUPERUSER_PASSWORD = env("DJANGO_SUPERUSER_PASSWORD", default=None)
JOBS_LOG_FORMAT = env("JOBS_LOG_FORMAT", default="keyvalue")  # or "json"

# Metrics: every process of this host writes its counters here and GET /metrics adds them up
# (prometheus-client's multiprocess mode, chosen from the environment when it is imported).
# One directory per host or container, never shared between hosts. See jobs/infra/metrics.py.
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "prometheus"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
# A host running workers but no web server serves its metrics on this port (0: not served).
JOBS_METRICS_PORT = env.int("JOBS_METRICS_PORT", default=0)
JOBS_METRICS_ADDR = env("JOBS_METRICS_ADDR", default="127.0.0.1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "keyvalue": {"format": "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"},
        "json": {"()": "jobs.infra.events.JsonFormatter"},
    },
    # A full queue is the gate at work, not a server error: see jobs.web.log_filters.NoRefusalLogs.
    "filters": {
        "no_refusals": {"()": "jobs.web.log_filters.NoRefusalLogs"},
        # Not a line per publish-due tick (every 2 s): jobs_housekeeping_runs_total counts them.
        "quiet_ticks": {"()": "jobs.infra.events.QuietTicks", "tasks": ["jobs.periodic.publish_due_jobs"]},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": JOBS_LOG_FORMAT,
                             "filters": ["quiet_ticks"]}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "django.request": {"filters": ["no_refusals"]}},
}
