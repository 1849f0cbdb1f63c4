"""Base settings, read from the environment (12-factor) with safe production defaults. Every environment
module (dev, test, prod) starts from this one. Nothing here is a secret: secrets come from environment
variables only."""
import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# The templates travel inside the config package (config/templates links to templates/ in a checkout), so
# an installed package finds them too; BASE_DIR is the checkout, or site-packages once installed.
TEMPLATES_DIR = Path(__file__).parent.parent / "templates"


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY = os.environ.get("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "simple_history",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    # Lowest layer first (ARCHITECTURE.md): receivers of a hook run in this order.
    "audit",
    "ledger",
    "exceptions_queue",
    "billing_sync",
    # The read side and the staff portal: last, the top layer (nothing below imports it).
    "portal",
]

MIDDLEWARE = [
    "config.middleware.CorrelationIdMiddleware",
    # Under /api/, Django's own error pages (404, 500, ...) become problem documents too.
    "config.middleware.ApiProblemMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # POST /api/v1/events with a bearer token answered here, without the portal's stack (issue 13 item 3);
    # anything it does not answer goes on down the list. TIEOUT_LEAN_INGEST=off turns it off.
    "billing_sync.views.lean.LeanIngestMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "portal.web.middleware.TwoFactorRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Last, as django-axes asks: it turns a lockout raised by authenticate() into the lockout answer.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: a locked-out user is refused before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [TEMPLATES_DIR],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.web.access.portal",
            ],
            # `{{ amount|money:currency }}` in every template (portal/templatetags/money.py).
            "builtins": ["portal.templatetags.money"],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tieout"),
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
# Parameters bound by the server and statements prepared from their fifth run on a connection (psycopg's
# prepare_threshold): the worker sends the same few statements for every event it processes, and planning them
# each time (the events' partitions, joins) cost as much as running them. Behind a pooler in transaction mode,
# use PgBouncer 1.21 or later (it tracks prepared statements) or set DB_PREPARE_THRESHOLD=off.
_prepare_threshold = os.environ.get("DB_PREPARE_THRESHOLD", "5")
DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", True)
DATABASES["default"]["OPTIONS"].setdefault(
    "prepare_threshold", None if _prepare_threshold.lower() == "off" else int(_prepare_threshold))
# PostgreSQL's JIT compiles a statement whose estimated cost passes `jit_above_cost` (100,000 by default) before
# running it: a chunk's look-up of the events queued behind its own (200 probes, estimated ~500,000) took 520-670 ms
# compiled against 4 ms interpreted, on every chunk. Our statements are short and repeated; compiling never pays.
# DB_JIT=on leaves the server's setting. Behind PgBouncer (which may refuse the `options` start-up parameter), set
# DB_JIT=on here and `ALTER ROLE ... SET jit = off` on the server instead.
if os.environ.get("DB_JIT", "off").strip().lower() == "off":
    _options = DATABASES["default"]["OPTIONS"].get("options", "")
    if "jit=" not in _options:
        DATABASES["default"]["OPTIONS"]["options"] = f"{_options} -c jit=off".strip()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "tieout"),
        "TIMEOUT": 300,
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Brute-force lockout (django-axes): this many failures for one username locks it for the cool-off.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_HOURS", "0.25"))  # hours
# Per username, not per address: finance teams sign in from one office NAT, where an address lockout
# would lock everyone out after one person's typos. (axes.W006 asks for the address; silenced below.)
AXES_LOCKOUT_PARAMETERS = ["username"]
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
# Renders that template with when to retry (and a Retry-After header): portal.web.accounts.
AXES_LOCKOUT_CALLABLE = "portal.web.accounts.locked_out"
AXES_USERNAME_FORM_FIELD = "username"
AXES_VERBOSE = False
# Behind the proxies gunicorn trusts (FORWARDED_ALLOW_IPS), the client address is the forwarded one.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]

# Two-factor authentication (django-otp TOTP): required for controllers and admins. Only the
# environment can turn it off (TIEOUT_2FA=off), for demos and tests; production keeps it on.
TIEOUT_2FA = os.environ.get("TIEOUT_2FA", "on").strip().lower() not in {"off", "0", "false", "no"}
OTP_TOTP_ISSUER = "Tieout"

# Sessions and cookies: secure by default; dev relaxes what needs HTTPS.
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
SESSION_COOKIE_AGE = int(os.environ.get("SESSION_COOKIE_AGE", str(30 * 60)))
SESSION_SAVE_EVERY_REQUEST = True
# The session cookie also ends with the browser (shared finance workstations), on top of the idle timeout.
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
TIEOUT_LEAN_INGEST = env_bool("TIEOUT_LEAN_INGEST", True)
X_FRAME_OPTIONS = "DENY"

# The batch endpoint takes up to 1,000 events: allow bodies of that size.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", str(32 * 1024 * 1024)))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "billing_sync.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.api.LimitedJSONParser"],
    "DEFAULT_METADATA_CLASS": "config.api.ApiMetadata",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "config.api.DefaultPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "config.api.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["config.api.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": os.environ.get("API_THROTTLE_RATE", "100000/min")},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Tieout API",
    "DESCRIPTION": "Billing events in, balanced and approved journals out to the ERP.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Every error answer of every operation, with its problem+json body (config.api).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "config.api.problem_responses_hook"],
}

# Celery: Redis broker (or RabbitMQ: CELERY_BROKER_URL=amqp://...); posting is at-least-once with idempotent tasks.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Longer than any retry countdown, or Redis would redeliver a message that is merely waiting
# (checked when a worker starts: config.celery.check_visibility_timeout).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600")),
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# With the broker down the API must answer at once: publish fails fast and the sweeps re-send later.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# Celery's Django fix-up (5.4 and later) closes every database connection before and after each task unless this
# is set; then it closes them once per this many tasks. A worker opening a PostgreSQL session for every task paid
# for the connection and a cold backend (catalog caches, no prepared statements) each time: ~12 ms for a task
# with nothing to do (bench/drain.py: 2 processes drained 1.37x faster once sessions were kept). Between those
# closes, each task starts as a request does (config.celery: CONN_MAX_AGE and the health check decide).
CELERY_DB_REUSE_MAX = int(os.environ.get("CELERY_DB_REUSE_MAX", "1000"))
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_ROUTES = {
    "ledger.tasks.post_journal": {"queue": "posting"},
    "ledger.tasks.post_erp_batch": {"queue": "posting"},
    "ledger.tasks.post_ready_journals": {"queue": "posting"},
    "billing_sync.tasks.deliver_callback": {"queue": "callbacks"},
    "billing_sync.tasks.reconcile": {"queue": "reconciliation"},
    "billing_sync.tasks.reconcile_incremental_all": {"queue": "reconciliation"},
    "billing_sync.tasks.reconcile_full_all": {"queue": "reconciliation"},
    "billing_sync.tasks.*": {"queue": "celery"},
}
# Event processing goes to lane queues `events.0` ... by a stable hash of the event's customer or document
# (config.lanes, billing_sync.dispatch); every web and worker machine must agree on the count.
TIEOUT_LANES = int(os.environ.get("TIEOUT_LANES", "8"))
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE = {
    # Undispatched outbox rows, posting retries that are due, expired leases: every journal posts within
    # grace + this interval of its due time even when the worker that held its retry's countdown died.
    "outbox-sweep": {"task": "ledger.tasks.sweep_outbox",
                     "schedule": float(os.environ.get("TIEOUT_OUTBOX_SWEEP_SECONDS", "15"))},
    "events-sweep": {"task": "billing_sync.tasks.sweep_accepted_events", "schedule": 15.0},
    "events-parked-sweep": {"task": "billing_sync.tasks.sweep_parked_events",
                            "schedule": float(os.environ.get("TIEOUT_PARKED_SWEEP_SECONDS", "300"))},
    "audit-seal": {"task": "audit.tasks.seal_audit_chain", "schedule": 5.0},
    # Incremental verification every 5 minutes, a full one daily (a task of the queue, which opens
    # audit_chain_broken when it fails); digests of finished UTC days hourly (a day gets its digest once,
    # at the first run after midnight).
    "audit-verify": {"task": "exceptions_queue.tasks.verify_audit_chain", "schedule": 300.0},
    "audit-verify-full": {"task": "exceptions_queue.tasks.verify_audit_chain", "schedule": 86400.0,
                          "kwargs": {"full": True}},
    "audit-digests": {"task": "audit.tasks.build_audit_digests", "schedule": 3600.0},
    # Monthly partitions of audit entries, receipts and events, TIEOUT_PARTITIONS_AHEAD months ahead (daily:
    # a missed run or two changes nothing).
    "partitions-ensure": {"task": "audit.tasks.ensure_partitions", "schedule": 86400.0},
    "tables-analyze": {"task": "audit.tasks.analyze_tables",
                       "schedule": float(os.environ.get("TIEOUT_ANALYZE_SECONDS", "30"))},
    "erp-batches-sweep": {"task": "ledger.tasks.sweep_erp_batches", "schedule": 5.0},
    "callbacks-sweep": {"task": "billing_sync.tasks.sweep_callbacks", "schedule": 10.0},
    # Reconciliation (queue `reconciliation`): an incremental run per entity every few minutes (ERP documents
    # changed since the last run), a full one nightly over the open months.
    "reconcile-incremental": {"task": "billing_sync.tasks.reconcile_incremental_all",
                              "schedule": float(os.environ.get("TIEOUT_RECONCILIATION_INCREMENTAL_SECONDS", "300"))},
    "reconcile-full-nightly": {"task": "billing_sync.tasks.reconcile_full_all",
                               "schedule": crontab(hour=int(os.environ.get("TIEOUT_RECONCILIATION_FULL_HOUR", "2")),
                                                   minute=15)},
    # The dashboard's month-scale figures for every entity, before the 5 minutes they are kept run out.
    "dashboard-month-figures": {"task": "portal.tasks.refresh_dashboard_month_figures", "schedule": 240.0},
}

# Tieout's own knobs.
TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS = int(os.environ.get("TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS", "30"))
# Events processed in one transaction by a worker (billing_sync.services.events_process), and per task message.
TIEOUT_PROCESS_CHUNK = int(os.environ.get("TIEOUT_PROCESS_CHUNK", "200"))
# A task whose message names fewer events than a chunk takes the oldest other ready events too (not held, not
# locked by another worker), up to a chunk: events arriving one by one are then processed in chunks whenever
# they queue up, instead of a task and a transaction each.
TIEOUT_PROCESS_FILL = os.environ.get("TIEOUT_PROCESS_FILL", "on").lower() not in ("off", "0", "false")
TIEOUT_POSTING_MAX_RETRIES = int(os.environ.get("TIEOUT_POSTING_MAX_RETRIES", "8"))
# Deliveries of one journal's posting task (retries and redeliveries after a worker died) before it is parked.
TIEOUT_POSTING_MAX_DELIVERIES = int(os.environ.get("TIEOUT_POSTING_MAX_DELIVERIES", "12"))
# Backoff between posting retries: exponential with full jitter, capped (seconds).
TIEOUT_POSTING_BACKOFF_CAP = float(os.environ.get("TIEOUT_POSTING_BACKOFF_CAP", "300"))
# Batch mode (per entity): a batch closes after this many seconds or this many journals.
TIEOUT_BATCH_WINDOW_SECONDS = float(os.environ.get("TIEOUT_BATCH_WINDOW_SECONDS", "30"))
TIEOUT_BATCH_MAX_JOURNALS = int(os.environ.get("TIEOUT_BATCH_MAX_JOURNALS", "500"))
# The longest an ERP's Retry-After may make us wait before the next attempt (seconds).
TIEOUT_POSTING_RETRY_AFTER_CAP = float(os.environ.get("TIEOUT_POSTING_RETRY_AFTER_CAP", "900"))
# How long one worker may hold a journal while it talks to the ERP; after that the sweep takes it back.
TIEOUT_POSTING_LEASE_SECONDS = float(os.environ.get("TIEOUT_POSTING_LEASE_SECONDS", "180"))
# A retry's due time is kept on the journal (or batch); the sweeps (`outbox-sweep`, `erp-batches-sweep`) send
# what is due. The task's own countdown is the fast path: the sweep leaves a due retry to it for this long ...
TIEOUT_POSTING_DUE_GRACE_SECONDS = float(os.environ.get("TIEOUT_POSTING_DUE_GRACE_SECONDS", "5"))
# ... and sends a due journal or batch it already queued again only after this long (its message was lost).
TIEOUT_POSTING_REDISPATCH_SECONDS = float(os.environ.get("TIEOUT_POSTING_REDISPATCH_SECONDS", "60"))
# Concurrent per-journal posting (ledger.services.drain): journals in flight to the ERP at once per drain (one
# drain per worker process at a time; a thread each), drains per entity at once (at most one per worker process
# is useful), how long one drain runs before it hands over to a fresh task, how long a drainer's doorbell
# outlives it (a drainer that died is replaced by the outbox sweep after this), the longest wait for the rate
# limiter before a drain hands over with a countdown, and before a post after a look-up gives up (a retry).
TIEOUT_POSTING_IN_FLIGHT = int(os.environ.get("TIEOUT_POSTING_IN_FLIGHT", "64"))
TIEOUT_POSTING_DRAINERS = int(os.environ.get("TIEOUT_POSTING_DRAINERS", "4"))
TIEOUT_POSTING_DRAIN_SECONDS = float(os.environ.get("TIEOUT_POSTING_DRAIN_SECONDS", "60"))
TIEOUT_POSTING_WAKE_TTL = float(os.environ.get("TIEOUT_POSTING_WAKE_TTL", "30"))
TIEOUT_POSTING_DRAIN_MAX_SLEEP = float(os.environ.get("TIEOUT_POSTING_DRAIN_MAX_SLEEP", "5"))
TIEOUT_POSTING_TOKEN_WAIT_SECONDS = float(os.environ.get("TIEOUT_POSTING_TOKEN_WAIT_SECONDS", "10"))
# Requests per second to one ERP (connector and URL), all processes together: `name=rate` per connector, `*` for
# the rest; an entity's `requests_per_second` ERP setting wins (and `burst`, one second's worth by default). A
# 429 without Retry-After pauses every process for TIEOUT_ERP_PAUSE_SECONDS.
TIEOUT_ERP_REQUESTS_PER_SECOND = os.environ.get("TIEOUT_ERP_REQUESTS_PER_SECOND", "erpnext=50,odoo=50,netsuite=10,*=50")
TIEOUT_ERP_PAUSE_SECONDS = float(os.environ.get("TIEOUT_ERP_PAUSE_SECONDS", "1"))
TIEOUT_TOKEN_CACHE_SECONDS = float(os.environ.get("TIEOUT_TOKEN_CACHE_SECONDS", "5"))
# Reconciliation: how many open months a nightly full run covers (months without a closed period, newest
# first); how many posted journals missing from the ERP's listing a run looks up one by one before calling
# them missing; after how long a run still `running` counts as abandoned (its worker died) and stops blocking
# the entity's next run.
TIEOUT_RECONCILIATION_OPEN_MONTHS = int(os.environ.get("TIEOUT_RECONCILIATION_OPEN_MONTHS", "3"))
TIEOUT_RECONCILIATION_LOOKUPS = int(os.environ.get("TIEOUT_RECONCILIATION_LOOKUPS", "50"))
TIEOUT_RECONCILIATION_STALE_SECONDS = float(os.environ.get("TIEOUT_RECONCILIATION_STALE_SECONDS", "7200"))
# Whether a run's open-amount check may run on a second database session beside the document check (two cores
# of the database at once; off: one session does both, one after the other).
TIEOUT_RECONCILIATION_PARALLEL = os.environ.get("TIEOUT_RECONCILIATION_PARALLEL", "1") not in ("", "0", "false")
# ERP read-back (reconciliation): attempts per request (rate limits and transient failures are retried with
# exponential backoff and jitter: base doubling up to the cap), and the longest Retry-After honoured (seconds).
TIEOUT_READBACK_MAX_ATTEMPTS = int(os.environ.get("TIEOUT_READBACK_MAX_ATTEMPTS", "6"))
TIEOUT_READBACK_BACKOFF_BASE = float(os.environ.get("TIEOUT_READBACK_BACKOFF_BASE", "0.5"))
TIEOUT_READBACK_BACKOFF_CAP = float(os.environ.get("TIEOUT_READBACK_BACKOFF_CAP", "30"))
TIEOUT_READBACK_RETRY_AFTER_CAP = float(os.environ.get("TIEOUT_READBACK_RETRY_AFTER_CAP", "120"))
# Status callbacks to source systems: attempts per delivery before it fails (and opens callback_failed),
# exponential backoff with jitter between them (base doubling, capped), and the HTTP timeouts of one POST.
TIEOUT_CALLBACK_MAX_ATTEMPTS = int(os.environ.get("TIEOUT_CALLBACK_MAX_ATTEMPTS", "12"))
TIEOUT_CALLBACK_BACKOFF_BASE = float(os.environ.get("TIEOUT_CALLBACK_BACKOFF_BASE", "10"))
TIEOUT_CALLBACK_BACKOFF_CAP = float(os.environ.get("TIEOUT_CALLBACK_BACKOFF_CAP", "3600"))
TIEOUT_CALLBACK_CONNECT_TIMEOUT = float(os.environ.get("TIEOUT_CALLBACK_CONNECT_TIMEOUT", "3"))
TIEOUT_CALLBACK_READ_TIMEOUT = float(os.environ.get("TIEOUT_CALLBACK_READ_TIMEOUT", "10"))

# Audit digests are signed with this Ed25519 key (base64 of the 32-byte seed, or a PKCS#8 PEM; make one
# with `manage.py audit_keygen`). Without it, only non-production settings fall back to the published,
# non-secret development key (TIEOUT_AUDIT_DEV_KEY); config.settings.prod never does.
TIEOUT_AUDIT_SIGNING_KEY = os.environ.get("TIEOUT_AUDIT_SIGNING_KEY", "")
_PRODUCTION = os.environ.get("DJANGO_SETTINGS_MODULE", "").endswith(".prod")
TIEOUT_AUDIT_DEV_KEY = env_bool("TIEOUT_AUDIT_DEV_KEY", True) and not _PRODUCTION
# Benchmarks only (bench/audit_chain.py): off skips the entry hash on write, to measure what the chain costs.
TIEOUT_AUDIT_HASHING = os.environ.get("TIEOUT_AUDIT_HASHING", "on").strip().lower() not in {"off", "0", "false", "no"}
# Partitions (audit entries, receipts, events) made ahead of the current month by beat's `partitions-ensure`.
TIEOUT_PARTITIONS_AHEAD = int(os.environ.get("TIEOUT_PARTITIONS_AHEAD", "3"))
# Beat's `tables-analyze` takes a table's (a partition's) statistics again once this many of its rows and this
# share of them changed since the last time (audit.services.tables_analyze): a month-end burst plans on today's rows.
TIEOUT_ANALYZE_MIN_ROWS = int(os.environ.get("TIEOUT_ANALYZE_MIN_ROWS", "5000"))
TIEOUT_ANALYZE_FRACTION = float(os.environ.get("TIEOUT_ANALYZE_FRACTION", "0.02"))
# Where retention writes its archive packs (portal.services.retention_archive), unless a policy names a place.
TIEOUT_RETENTION_DIR = os.environ.get("TIEOUT_RETENTION_DIR", str(BASE_DIR / "var" / "retention"))

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOG_JSON = env_bool("LOG_JSON", True)

from config.logging import build_logging  # noqa: E402

LOGGING = build_logging(LOG_LEVEL, LOG_JSON)
