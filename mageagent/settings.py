"""Django settings for MageAgent. Everything deployment-specific comes from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import environ

from .env import ConfigError, env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("MAGEAGENT_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-insecure-secret-key-change-me" if DEBUG else "")
if not SECRET_KEY:
    from .env import ConfigError

    raise ConfigError("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc files, served by the service (no CDN)
    "channels",
    "django_celery_beat",
    "mageagent.tenancy",
    "tasks",
    "routing",
    "tools",
    "openai_api",
    "webhooks",
]

MIDDLEWARE = [
    "mageagent.middleware.request_context_middleware",
    "mageagent.middleware.allowed_host_middleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mageagent.urls"
ASGI_APPLICATION = "mageagent.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "mageagent" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'mageagent.sqlite3'}")
_db = environ.Env.db_url_config(DATABASE_URL)
if _db["ENGINE"] == "django.db.backends.postgresql":
    # A pool keeps worker threads from opening (and PostgreSQL from forking) a backend
    # per task; connections go back to it when Django closes them.
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("MAGEAGENT_DB_POOL_MIN", 2, minimum=0),
        "max_size": env_int("MAGEAGENT_DB_POOL_MAX", 20, minimum=1),
        # How long a thread waits for a connection. With the database down the pool cannot
        # make one, and every request waited this long for its 503 (30 s, psycopg_pool's
        # default, outlasted clients' timeouts); busy connections are lent for milliseconds.
        "timeout": env_float("MAGEAGENT_DB_POOL_TIMEOUT", 5.0, minimum=0.1),
        # How long the pool keeps retrying a connection it failed to make, its delay doubling
        # each time. Past it the attempt ends and the next request that finds no connection
        # starts a new one at once: after a minute's outage, psycopg_pool's default (5 min)
        # had the next attempt up to 30 s after the database was back, and 503s meanwhile.
        "reconnect_timeout": env_float("MAGEAGENT_DB_RECONNECT_S", 5.0, minimum=0.1),
    }
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web, worker and beat processes read while one writes.
    _db.setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE",
         "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
    _db["TEST"] = {"NAME": env_str("MAGEAGENT_TEST_DB_NAME", str(VAR_DIR / "test.sqlite3"))}
if _db["ENGINE"] == "django.db.backends.postgresql" and env_str("MAGEAGENT_TEST_DB_NAME", ""):
    _db["TEST"] = {"NAME": env_str("MAGEAGENT_TEST_DB_NAME", "")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, channel layer, event log, cache ------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "ma:cache",
    }
}

CHANNEL_LAYERS: dict[str, Any] = {
    "default": {
        # channels-redis's pub/sub layer, with batched subscriptions (mageagent/channel_layer.py):
        # fan-out is one PUBLISH per event. JSON serialization lets the event log's Lua script
        # publish an event into a group atomically with appending it (see tasks/events.py), so
        # a subscriber can never see an event the log lacks.
        "BACKEND": "mageagent.channel_layer.BatchingPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "ma:ch", "serializer_format": "json"},
    }
}

# Bodies are capped by the ASGI handler before they are read (mageagent/handlers.py), by
# MAGEAGENT["MAX_BODY_BYTES"] or a larger limit of the path (a prompt as long as the largest
# model's context window); Django's own check would refuse those after reading them.
DATA_UPLOAD_MAX_MEMORY_SIZE = None

# --- Internationalisation, static -------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"


def _files_storage() -> dict[str, Any]:
    """Where uploads for file_processing live (django.core.files.storage.storages["files"]):
    the file system for one machine (or a volume every process mounts), an S3-compatible
    object store (S3, MinIO, R2, GCS's S3 API) for several machines."""
    backend = env_str("MAGEAGENT_FILES_STORAGE", "filesystem")
    if backend == "filesystem":
        return {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": env_str("MAGEAGENT_FILES_DIR", str(VAR_DIR / "files"))}}
    if backend == "s3":
        bucket = env_str("MAGEAGENT_FILES_S3_BUCKET", "")
        if not bucket:
            raise ConfigError("MAGEAGENT_FILES_STORAGE=s3 needs MAGEAGENT_FILES_S3_BUCKET")
        return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": env_str("MAGEAGENT_FILES_S3_ENDPOINT_URL", "") or None,
            "region_name": env_str("MAGEAGENT_FILES_S3_REGION", "") or None,
            "location": env_str("MAGEAGENT_FILES_S3_PREFIX", ""),
            # Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the machine's role (boto3).
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": True,
        }}
    raise ConfigError(f"MAGEAGENT_FILES_STORAGE must be filesystem or s3, got {backend!r}")


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "files": _files_storage(),
}

# --- DRF -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["mageagent.tenancy.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["mageagent.tenancy.auth.IsTenant"],
    "DEFAULT_THROTTLE_CLASSES": ["mageagent.tenancy.throttling.AppRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON only: a multipart POST /tasks is a 415 (its fields are not flattened into the
    # task's). The uploads (knowledge documents, files) take multipart themselves.
    "DEFAULT_PARSER_CLASSES": ["mageagent.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "mageagent.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "mageagent.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MageAgent API",
    "DESCRIPTION": (BASE_DIR / "mageagent" / "openapi.md").read_text(),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/mageagent/api/v1",
    # Request bodies get their own components: read-only fields left out, blank strings refused.
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "tasks.openapi.document_stream"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "persistAuthorization": True},
}

# --- Celery ------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "mageagent.broker:Transport"  # kombu's, one Redis client per channel
CELERY_RESULT_BACKEND = None  # tasks report through the Task row and the event log
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False  # the reconciler re-enqueues; no poison loops
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("MAGEAGENT_WORKER_PREFETCH", 1, minimum=1)
CELERY_TASK_DEFAULT_QUEUE = env_str("MAGEAGENT_QUEUE", "mageagent")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    # Unacked messages come back after this; longer than any task may run.
    "visibility_timeout": env_int("MAGEAGENT_VISIBILITY_TIMEOUT", 3600, minimum=60),
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_SEND_TASK_EVENTS = True  # Flower
# No "task-sent" event: it doubles the cost of every enqueue; Flower sees tasks on receipt.
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_POOL = env_str("MAGEAGENT_WORKER_POOL", "threads")
CELERY_WORKER_CONCURRENCY = env_int("MAGEAGENT_WORKER_CONCURRENCY", 2000, minimum=1)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Where operators find Flower (linked from the admin queue page); empty hides the link.
FLOWER_URL = env_str("MAGEAGENT_FLOWER_URL", "")

# --- MageAgent --------------------------------------------------------------------------
MAGEAGENT: dict[str, Any] = {
    "TASK_MAX_ATTEMPTS": env_int("MAGEAGENT_TASK_MAX_ATTEMPTS", 3, minimum=1),
    "RETRY_BACKOFF_S": env_float("MAGEAGENT_RETRY_BACKOFF_S", 2.0, minimum=0.0),
    "TASK_SOFT_TIME_LIMIT_S": env_float("MAGEAGENT_TASK_SOFT_TIME_LIMIT", 300.0, minimum=1.0),
    "TASK_HARD_TIME_LIMIT_S": env_float("MAGEAGENT_TASK_HARD_TIME_LIMIT", 330.0, minimum=1.0),
    "EVENT_TTL_S": env_int("MAGEAGENT_EVENT_TTL", 86400, minimum=60),
    "CHUNK_COALESCE_MS": env_float("MAGEAGENT_CHUNK_COALESCE_MS", 100.0, minimum=0.0),
    "SSE_PING_S": env_float("MAGEAGENT_SSE_PING_S", 15.0, minimum=0.05),
    # How long a follower (SSE, WebSocket) waits for an unreadable event log (Redis down)
    # before it ends the stream for its client to reconnect (tasks/follow.py).
    "FOLLOW_OUTAGE_S": env_float("MAGEAGENT_FOLLOW_OUTAGE_S", 30.0, minimum=0.0),
    "CANCEL_WAIT_S": env_float("MAGEAGENT_CANCEL_WAIT_S", 1.0, minimum=0.0),
    "WORKER_HEARTBEAT_S": env_float("MAGEAGENT_WORKER_HEARTBEAT_S", 5.0, minimum=0.5),
    "RECONCILE_QUEUED_AFTER_S": env_int("MAGEAGENT_RECONCILE_QUEUED_AFTER", 30, minimum=5),
    # Workers take turns at reconciling under a Redis lease (tasks/runtime/lease.py), so
    # web + worker alone recover what a dead worker or a restarted Redis lost; beat may run too.
    "RECONCILE_IN_WORKERS": env_bool("MAGEAGENT_RECONCILE_IN_WORKERS", True),
    "RECONCILE_EVERY_S": env_float("MAGEAGENT_RECONCILE_EVERY_S", 10.0, minimum=1.0),
    # How long a worker thread waits for the database or Redis to come back before it gives
    # a task up to the reconciler (an attempt that finished keeps its answer meanwhile).
    "DEPENDENCY_WAIT_S": env_float("MAGEAGENT_DEPENDENCY_WAIT_S", 60.0, minimum=0.0),
    "RETENTION_COMPLETED_DAYS": env_float("MAGEAGENT_RETENTION_COMPLETED_DAYS", 1.0, minimum=0.0),
    "RETENTION_COMPLETED_MAX": env_int("MAGEAGENT_RETENTION_COMPLETED_MAX", 1000, minimum=0),
    "RETENTION_FAILED_DAYS": env_float("MAGEAGENT_RETENTION_FAILED_DAYS", 1.0, minimum=0.0),
    "RETENTION_FAILED_MAX": env_int("MAGEAGENT_RETENTION_FAILED_MAX", 5000, minimum=0),
    "IDEMPOTENCY_TTL_S": env_int("MAGEAGENT_IDEMPOTENCY_TTL", 86400, minimum=60),
    # 0: the largest enabled model's context window at ~4 characters a token (routing/selectors.py).
    "MAX_BODY_BYTES": env_int("MAGEAGENT_MAX_BODY_BYTES", 2_621_440, minimum=1024),
    "MAX_PROMPT_CHARS": env_int("MAGEAGENT_MAX_PROMPT_CHARS", 0, minimum=0),
    # Threads of a web process that run HTTP requests, and those for requests that wait
    # (cancels, the admin): mageagent/handlers.py.
    "WEB_THREADS": env_int("MAGEAGENT_WEB_THREADS", 2, minimum=1),
    "WEB_WAIT_THREADS": env_int("MAGEAGENT_WEB_WAIT_THREADS", 32, minimum=1),
    # API requests that may wait for one of those threads; past it a request gets a 503.
    "WEB_QUEUE_MAX": env_int("MAGEAGENT_WEB_QUEUE_MAX", 64, minimum=0),
    "API_KEY_CACHE_S": env_float("MAGEAGENT_API_KEY_CACHE_S", 5.0, minimum=0.0),
    # API requests per minute per app (its keys together) where the app sets none; 0: no
    # limit. A limited app may burst API_RATE_BURST_S seconds' worth at once.
    "API_RATE_PER_MIN": env_int("MAGEAGENT_API_RATE_PER_MIN", 0, minimum=0),
    "API_RATE_BURST_S": env_float("MAGEAGENT_API_RATE_BURST_S", 10.0, minimum=0.001),
    "DEFAULT_MODEL": env_str("MAGEAGENT_DEFAULT_MODEL", "gpt-4o-mini"),
    "LLM_API_BASE": env_str("MAGEAGENT_LLM_API_BASE", ""),
    "LLM_API_KEY": env_str("MAGEAGENT_LLM_API_KEY", ""),
    "LLM_CONFIG": env_str("MAGEAGENT_LLM_CONFIG", ""),
    "LLM_TIMEOUT_S": env_float("MAGEAGENT_LLM_TIMEOUT_S", 120.0, minimum=1.0),
    "LLM_MAX_CONNECTIONS": env_int("MAGEAGENT_LLM_MAX_CONNECTIONS", 2000, minimum=1),
    "SYSTEM_PROMPT": env_str("MAGEAGENT_SYSTEM_PROMPT", "You are a helpful AI assistant."),
    # Operations (README, "Operations"): /metrics asks for `Authorization: Bearer <token>`
    # when a token is set; each worker process serves its metrics on this port (0: off).
    "METRICS_TOKEN": env_str("MAGEAGENT_METRICS_TOKEN", ""),
    "WORKER_METRICS_PORT": env_int("MAGEAGENT_WORKER_METRICS_PORT", 0, minimum=0),
    # Fair scheduling (tasks/fair.py, README "Fair scheduling"): tasks wait in per-app queues
    # in Redis and at most FAIR_WINDOW of them sit in the broker, sent but not yet taken by a
    # worker; each slot that frees goes to the tenant the fair order picks next.
    # The window is a quarter of the tasks in flight, within [FAIR_WINDOW_MIN, FAIR_WINDOW].
    "FAIR_WINDOW": env_int("MAGEAGENT_FAIR_WINDOW", 64, minimum=1),
    "FAIR_WINDOW_MIN": env_int("MAGEAGENT_FAIR_WINDOW_MIN", 8, minimum=1),
    # Within an app a task of priority p goes before tasks queued up to p * this much earlier.
    "FAIR_PRIORITY_AGING_MS": env_int("MAGEAGENT_FAIR_PRIORITY_AGING_MS", 60_000, minimum=0),
    # The answer's length a task is charged at its dispatch when it sets no max_tokens (its
    # actual tokens are charged when it ends).
    "FAIR_DEFAULT_OUTPUT_TOKENS": env_int("MAGEAGENT_FAIR_DEFAULT_OUTPUT_TOKENS", 500, minimum=1),
    "FAIR_QUEUE_FULL_RETRY_AFTER_S": env_int("MAGEAGENT_FAIR_QUEUE_FULL_RETRY_AFTER_S", 5, minimum=1),
    # A task sent to the broker but not taken this long, no longer in the broker: its sender
    # died between the pick and the send; the reconciler queues it again.
    "FAIR_LOST_AFTER_S": env_float("MAGEAGENT_FAIR_LOST_AFTER_S", 30.0, minimum=1.0),
    "FAIR_CONFIG_CACHE_S": env_float("MAGEAGENT_FAIR_CONFIG_CACHE_S", 5.0, minimum=0.0),
}

# plain: text lines; json: one JSON object a line, with the ids it is about (mageagent/logging.py).
LOG_FORMAT = env_str("MAGEAGENT_LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ConfigError(f"MAGEAGENT_LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
_celery_task_log_level = env_str("MAGEAGENT_CELERY_TASK_LOG_LEVEL", "WARNING")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "mageagent.logging.ContextFilter"}},
    "formatters": {"plain": {"()": "mageagent.logging.PlainFormatter",
                             "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "mageagent.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env_str("MAGEAGENT_LOG_LEVEL", "INFO")},
    "loggers": {
        "mageagent.access": {"level": "INFO"},  # daphne's access log, as records when JSON
        # Django's default config gives these a console handler of their own (with DEBUG
        # on): their lines go through the root's handler instead, in the chosen format.
        "django": {"handlers": [], "level": "INFO"},
        "django.server": {"handlers": [], "level": "INFO"},
        # Keep ?token= URLs out of the access log (see mageagent/logging.py).
        "django.channels.server": {"level": "WARNING"},
        "LiteLLM": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # Celery's "Task ... received" and "... succeeded in" lines, two per task: the
        # worker's own "attempt N ended" line says the same with the task's id, company and
        # model. MAGEAGENT_CELERY_TASK_LOG_LEVEL=INFO brings them back.
        "celery.worker.strategy": {"level": _celery_task_log_level},
        "celery.app.trace": {"level": _celery_task_log_level},
    },
}

CELERY_BEAT_SCHEDULE = {
    "reconcile": {"task": "mageagent.housekeeping.reconcile",
                  "schedule": MAGEAGENT["RECONCILE_EVERY_S"]},
    "prune": {"task": "mageagent.housekeeping.prune",
              "schedule": env_float("MAGEAGENT_PRUNE_EVERY_S", 3600.0, minimum=10.0)},
    # Workers run this sweep themselves (webhooks/tasks.py); beat's run is a spare.
    "webhooks-sweep": {"task": "mageagent.webhooks.sweep",
                       "schedule": env_float("MAGEAGENT_WEBHOOK_SWEEP_S", 30.0, minimum=0.2)},
}

# --- Tools ------------------------------------------------------------------------------
# The tools a task may request (dotted paths of tools.registry.Tool subclasses) and their
# knobs. A tool whose backend is missing (no bubblewrap, no search provider, ...) stays
# registered but reports itself unavailable in GET /tools and cannot be requested.
MAGEAGENT_TOOLS: list[str] = env_list("MAGEAGENT_TOOLS", [
    "tools.builtin.code_execution.CodeExecutionTool",
    "tools.builtin.graphrag_search.GraphragSearchTool",
    "tools.builtin.web_search.WebSearchTool",
    "tools.builtin.file_processing.FileProcessingTool",
])
MAGEAGENT.update({
    "MAX_TOOL_ROUNDS": env_int("MAGEAGENT_MAX_TOOL_ROUNDS", 4, minimum=1),
    "TOOL_OUTPUT_MAX_CHARS": env_int("MAGEAGENT_TOOL_OUTPUT_MAX_CHARS", 20_000, minimum=100),
    # A tool whose backend is missing (bubblewrap) is checked again after this long, so
    # installing it takes effect without a restart.
    "TOOLS_RECHECK_S": env_float("MAGEAGENT_TOOLS_RECHECK_S", 30.0, minimum=0.0),
    # code_execution: bubblewrap sandbox limits (per run)
    "SANDBOX_BWRAP": env_str("MAGEAGENT_SANDBOX_BWRAP", "bwrap"),
    "SANDBOX_CPU_S": env_int("MAGEAGENT_SANDBOX_CPU_S", 10, minimum=1),
    "SANDBOX_WALL_S": env_float("MAGEAGENT_SANDBOX_WALL_S", 30.0, minimum=0.5),
    "SANDBOX_MEMORY_MB": env_int("MAGEAGENT_SANDBOX_MEMORY_MB", 256, minimum=32),
    "SANDBOX_MAX_PROCS": env_int("MAGEAGENT_SANDBOX_MAX_PROCS", 32, minimum=2),
    "SANDBOX_OUTPUT_BYTES": env_int("MAGEAGENT_SANDBOX_OUTPUT_BYTES", 65_536, minimum=1024),
    "SANDBOX_TMP_MB": env_int("MAGEAGENT_SANDBOX_TMP_MB", 64, minimum=1),
    "SANDBOX_CONCURRENCY": env_int("MAGEAGENT_SANDBOX_CONCURRENCY", 8, minimum=1),
    "SANDBOX_UID_BASE": env_int("MAGEAGENT_SANDBOX_UID_BASE", 1_500_000, minimum=1000),
    "SANDBOX_RO_BINDS": env_list("MAGEAGENT_SANDBOX_RO_BINDS", []),
    # Interpreters inside the sandbox (under /usr); empty: the first of /usr/bin, /usr/local/bin.
    "SANDBOX_PYTHON": env_str("MAGEAGENT_SANDBOX_PYTHON", ""),
    "SANDBOX_NODE": env_str("MAGEAGENT_SANDBOX_NODE", ""),
    "SANDBOX_BASH": env_str("MAGEAGENT_SANDBOX_BASH", ""),
    # graphrag_search / context.useGraphRAG: the built-in knowledge base, or an external service
    "KNOWLEDGE_CHUNK_CHARS": env_int("MAGEAGENT_KNOWLEDGE_CHUNK_CHARS", 1200, minimum=200),
    "KNOWLEDGE_MAX_BYTES": env_int("MAGEAGENT_KNOWLEDGE_MAX_BYTES", 10 * 1024 * 1024, minimum=1024),
    "GRAPHRAG_URL": env_str("MAGEAGENT_GRAPHRAG_URL", ""),
    "GRAPHRAG_API_KEY": env_str("MAGEAGENT_GRAPHRAG_API_KEY", ""),
    "GRAPHRAG_TIMEOUT_S": env_float("MAGEAGENT_GRAPHRAG_TIMEOUT_S", 10.0, minimum=0.1),
    # web_search: searxng | brave | tavily; empty picks the first one configured
    "WEB_SEARCH_PROVIDER": env_str("MAGEAGENT_WEB_SEARCH_PROVIDER", ""),
    "SEARXNG_URL": env_str("MAGEAGENT_SEARXNG_URL", ""),
    "BRAVE_API_KEY": env_str("BRAVE_API_KEY", ""),
    "BRAVE_URL": env_str("MAGEAGENT_BRAVE_URL", "https://api.search.brave.com/res/v1/web/search"),
    "TAVILY_API_KEY": env_str("TAVILY_API_KEY", ""),
    "TAVILY_URL": env_str("MAGEAGENT_TAVILY_URL", "https://api.tavily.com/search"),
    "WEB_SEARCH_TIMEOUT_S": env_float("MAGEAGENT_WEB_SEARCH_TIMEOUT_S", 15.0, minimum=0.1),
    # file_processing: uploads and SSRF-safe URL fetching
    "FILES_MAX_BYTES": env_int("MAGEAGENT_FILES_MAX_BYTES", 20 * 1024 * 1024, minimum=1024),
    # Bytes of uploads one company may keep (0 = no quota); uploads are pruned like tasks.
    "FILES_QUOTA_BYTES": env_int("MAGEAGENT_FILES_QUOTA_BYTES", 1024 * 1024 * 1024, minimum=0),
    "FILES_RETENTION_DAYS": env_float("MAGEAGENT_FILES_RETENTION_DAYS", 30.0, minimum=0.0),
    "FILES_RETENTION_MAX": env_int("MAGEAGENT_FILES_RETENTION_MAX", 1000, minimum=0),
    "FETCH_MAX_BYTES": env_int("MAGEAGENT_FETCH_MAX_BYTES", 20 * 1024 * 1024, minimum=1024),
    "FETCH_TIMEOUT_S": env_float("MAGEAGENT_FETCH_TIMEOUT_S", 20.0, minimum=0.1),
    "FETCH_MAX_REDIRECTS": env_int("MAGEAGENT_FETCH_MAX_REDIRECTS", 5, minimum=0),
    # Exact host names (as written in URLs) that may resolve to private addresses.
    "FETCH_ALLOWED_HOSTS": env_list("MAGEAGENT_FETCH_ALLOWED_HOSTS", []),
    "TESSERACT": env_str("MAGEAGENT_TESSERACT", "tesseract"),
    "SUMMARIZE_MODEL": env_str("MAGEAGENT_SUMMARIZE_MODEL", ""),
})
# --- end Tools ----------------------------------------------------------------------------

# --- Webhooks -----------------------------------------------------------------------------
def _seconds_list(name: str, default: list[float]) -> list[float]:
    from .env import ConfigError

    try:
        values = [float(v) for v in env_list(name, [str(d) for d in default])]
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of seconds") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{name} must list at least one delay, none negative")
    return values


MAGEAGENT.update({
    # Waits before each retry of a failed delivery (the Standard Webhooks suggestion: 5 s,
    # 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 28 h).
    "WEBHOOK_RETRY_SCHEDULE_S": _seconds_list("MAGEAGENT_WEBHOOK_RETRY_SCHEDULE",
                                              [5, 300, 1800, 7200, 18000, 36000, 36000]),
    "WEBHOOK_TIMEOUT_S": env_float("MAGEAGENT_WEBHOOK_TIMEOUT_S", 15.0, minimum=0.1),
    # An endpoint whose every attempt failed for this long is disabled, with a note.
    "WEBHOOK_DISABLE_AFTER_S": env_float("MAGEAGENT_WEBHOOK_DISABLE_AFTER_S", 5 * 86400.0, minimum=0.0),
    "WEBHOOK_SWEEP_S": env_float("MAGEAGENT_WEBHOOK_SWEEP_S", 30.0, minimum=0.2),
    # Retries due sooner than this wait in a Celery countdown; later ones are the sweep's
    # (well under the broker's visibility timeout, which would deliver a held message twice).
    "WEBHOOK_COUNTDOWN_MAX_S": env_float("MAGEAGENT_WEBHOOK_COUNTDOWN_MAX_S", 900.0, minimum=0.0),
    "WEBHOOK_ROTATION_GRACE_S": env_int("MAGEAGENT_WEBHOOK_ROTATION_GRACE_S", 86400, minimum=0),
    "WEBHOOK_MAX_PER_APP": env_int("MAGEAGENT_WEBHOOK_MAX_PER_APP", 20, minimum=1),
    # Each process remembers whether an app has an active webhook this long; a change
    # reaches every process at once through a version in Redis, this bounds it when Redis fails.
    "WEBHOOK_CACHE_S": env_float("MAGEAGENT_WEBHOOK_CACHE_S", 5.0, minimum=0.0),
})
# --- end Webhooks -------------------------------------------------------------------------

# --- Routing ------------------------------------------------------------------------------
# Model catalog, routing policy, deployments, rate limits and budgets (routing/).
# The policy below is the default; a company's CompanyRoutingPolicy overrides its keys.
MAGEAGENT_ROUTING: dict[str, Any] = {
    # litellm providers whose chat models seed the catalog (litellm's bundled map, offline).
    "CATALOG_PROVIDERS": env_list("MAGEAGENT_ROUTING_CATALOG_PROVIDERS", [
        "openai", "anthropic", "gemini", "cohere_chat", "openrouter", "mistral", "deepseek", "xai", "groq",
        "together_ai", "deepinfra", "perplexity"]),
    "CATALOG_CACHE_S": env_float("MAGEAGENT_ROUTING_CATALOG_CACHE_S", 10.0, minimum=0.0),
    # Failed deployments sit out this long (litellm Router cooldowns, shared through Redis).
    "COOLDOWN_S": env_float("MAGEAGENT_ROUTING_COOLDOWN_S", 30.0, minimum=0.0),
    "ALLOWED_FAILS": env_int("MAGEAGENT_ROUTING_ALLOWED_FAILS", 0, minimum=0),
    "REDIS_NAMESPACE": env_str("MAGEAGENT_ROUTING_REDIS_NAMESPACE", "ma:llm"),
    # rpm/tpm limits refill continuously; a deployment may burst this many seconds' worth.
    "RATE_LIMIT_BURST_S": env_float("MAGEAGENT_ROUTING_RATE_LIMIT_BURST_S", 60.0, minimum=0.001),
    # A budgeted task's answer is capped at this many tokens, so its reservation bounds its cost.
    "BUDGET_MAX_OUTPUT_TOKENS": env_int("MAGEAGENT_ROUTING_BUDGET_MAX_OUTPUT_TOKENS", 4096, minimum=1),
    # Budget limits are read on every enqueue; a changed budget applies within this time.
    "BUDGET_CACHE_S": env_float("MAGEAGENT_ROUTING_BUDGET_CACHE_S", 5.0, minimum=0.0),
    "RESERVATION_TTL_S": env_int("MAGEAGENT_ROUTING_RESERVATION_TTL_S", 3600, minimum=10),
    "POLICY": {
        # Complexity class -> the tier it needs (1 economy, 2 balanced, 3 premium).
        "tiers": {"simple": 1, "moderate": 2, "complex": 3},
        # Added to the complexity model's logits: positive values lean to that class.
        "complexity_bias": {"simple": 0.0, "moderate": 0.0, "complex": 0.0},
        "expected_output_tokens": {"simple": 256, "moderate": 1024, "complex": 2048},
        "tools_min_tier": 2,
        "long_context_tokens": 100_000,
        # Preferred models per characteristic, best first and across providers (so the
        # next one is a cross-provider fallback); other models of the tier follow by cost.
        "prefer": {
            "simple": ["gpt-4o-mini", "gemini/gemini-2.5-flash-lite", "command-r7b-12-2024",
                       "mistral/mistral-small-latest", "deepseek-chat"],
            "moderate": ["gpt-4.1-mini", "gemini/gemini-2.5-flash", "claude-haiku-4-5", "deepseek-chat",
                         "mistral/mistral-medium-latest"],
            "complex": ["gpt-4.1", "claude-sonnet-4-5", "gemini/gemini-2.5-pro", "command-a-03-2025",
                        "mistral/mistral-large-latest"],
            "tools": ["gpt-4.1-mini", "claude-haiku-4-5", "gemini/gemini-2.5-flash", "gpt-4.1",
                      "claude-sonnet-4-5"],
            "long_context": ["gemini/gemini-2.5-flash", "gpt-4.1-mini", "gemini/gemini-2.5-pro", "gpt-4.1",
                             "claude-sonnet-4-6"],
        },
        "max_candidates": 4,
        # A model named in the request falls back only to its own deployments unless true.
        "explicit_fallbacks": False,
    },
}
LOGGING["loggers"]["LiteLLM Router"] = {"level": "WARNING"}  # its INFO lines are per request
# --- end Routing --------------------------------------------------------------------------
