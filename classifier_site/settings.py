"""Settings for classifier_site, read from the environment.

With no variables set this is a working development site: SQLite under var/,
Celery over the embedded SQLite broker, media under var/media. Production parts
(PostgreSQL, Redis, S3-compatible storage) are switched on by their variables;
`.env.example` lists every one of them.
"""

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file beside manage.py is read when present; real environment variables win.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    """true/false, 1/0, yes/no, on/off in any case, or empty for the default; anything
    else stops start-up (DEBUG=ture must not quietly mean false)."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    raise ImproperlyConfigured(f"{name}={os.environ[name]!r} is not true or false (use true/false, 1/0 or yes/no).")


def env_secret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file NAME_FILE names (Docker and Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE", "").strip()
    if not path:
        return env.str(name, default=default)
    if os.environ.get(name):
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from exc


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (any case), or empty for the default; anything else stops start-up."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in choices:
        return raw
    raise ImproperlyConfigured(f"{name}={os.environ[name]!r} is not one of {', '.join(choices)}.")


VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))
# Created by each process at start (classifier_site.folders), not here: importing settings writes nothing.

DEBUG = env_bool("DEBUG", True)

_DEV_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
SECRET_KEY = env_secret("SECRET_KEY", default=_DEV_SECRET_KEY)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

if not DEBUG:
    # Refuse to start rather than run production with guessable keys or open hosts.
    if SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
        raise ImproperlyConfigured(
            "DEBUG is off: set SECRET_KEY to a random string of at least 50 characters "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DEBUG is off: set ALLOWED_HOSTS to the site's host names.")

CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "health_check",
    "axes",
    "datasets",
    "trainer",
    "classification",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Refuses a body by its headers (size, who sends it) before CSRF or a view reads it.
    "classifier_site.uploads.BodyGate",
    "classifier_site.errors.RefusalMiddleware",  # a refusal no page caught: 400/409 saying why; database down: 503
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: answers a locked-out login
]

ROOT_URLCONF = "classifier_site.urls"
WSGI_APPLICATION = "classifier_site.wsgi.application"

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
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------

DATABASES = {"default": env.db_url_config(env_secret("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker write to one SQLite file: WAL lets readers go
    # on during a write, IMMEDIATE transactions and a timeout avoid "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": env.str("SQLITE_TEST_NAME", default=str(VAR_DIR / "test-db.sqlite3"))}
# Persistent connections on SQLite too: opening one (and its PRAGMAs) costs about a
# millisecond, most of a prediction's budget.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Shared by web and worker processes (live import progress): files by default, Redis in production.
_CACHE_URL = env.str("CACHE_URL", default=f"filecache://{VAR_DIR / 'cache'}")
CACHES = {
    "default": env.cache_url_config(_CACHE_URL),
    # The throttles' counters (classifier_site.throttling): shared by every process, so a
    # user's limit is one count whichever process answers. A process takes leases of the
    # count, so a request rarely pays the shared cache's round trip.
    "throttle": env.cache("THROTTLE_CACHE_URL", default=_CACHE_URL),
}

# --- Files ------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]

MEDIA_URL = env.str("MEDIA_URL", default="/media/")
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
# Media is never served as static files: images are admin-only and go through
# views that check permissions (datasets.views.image_file_view).

AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
if AWS_STORAGE_BUCKET_NAME:
    # S3-compatible object storage shared by web and worker hosts (MinIO, S3, R2...).
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "access_key": env_secret("AWS_ACCESS_KEY_ID") or None,
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY") or None,
            "default_acl": None,
            "querystring_auth": True,
            # Names are content hashes: rewriting one writes the same bytes.
            "file_overwrite": True,
        },
    }
else:
    _default_storage = {
        "BACKEND": "classifier_site.storage.AtomicFileSystemStorage",
        "OPTIONS": {"allow_overwrite": True},
    }

STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Where workers and predictors keep local copies of model files fetched from storage.
MODEL_CACHE_DIR = Path(env.str("MODEL_CACHE_DIR", default=str(VAR_DIR / "model-cache")))
# Its budget: past it, the least recently used copies go (classifier_site.local_cache).
MODEL_CACHE_MAX_MB = env.int("MODEL_CACHE_MAX_MB", default=4096)

# Uploads larger than this are refused (413) before they are read into memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=20 * 1024 * 1024)
# Bodies are refused from their headers, before anything reads them (classifier_site.uploads):
# past MAX_BODY_BYTES on a route that takes no uploads (an upload route has its own limit),
# and past ANONYMOUS_MAX_BODY_BYTES from a client that is not signed in.
MAX_BODY_BYTES = env.int("MAX_BODY_BYTES", default=DATA_UPLOAD_MAX_MEMORY_SIZE)
ANONYMOUS_MAX_BODY_BYTES = env.int("ANONYMOUS_MAX_BODY_BYTES", default=64 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("FILE_UPLOAD_MAX_MEMORY_SIZE", default=5 * 1024 * 1024)
# Largest single image the site decodes (pixels); larger ones are decompression bombs.
MAX_IMAGE_PIXELS = env.int("MAX_IMAGE_PIXELS", default=40_000_000)
PREDICT_MAX_UPLOAD_BYTES = env.int("PREDICT_MAX_UPLOAD_BYTES", default=10 * 1024 * 1024)  # per request

# --- Serving ---------------------------------------------------------------------------

# Images one prediction request may carry (API and page); more get 413.
PREDICT_MAX_IMAGES = env.int("PREDICT_MAX_IMAGES", default=16)
# Learning from production (opted into per dataset on its live page): kept images still
# unlabelled after this many days are deleted, and at most this many wait per dataset.
CAPTURE_RETENTION_DAYS = env.int("CAPTURE_RETENTION_DAYS", default=30)
CAPTURE_MAX_IMAGES = env.int("CAPTURE_MAX_IMAGES", default=2000)
# Images one request may ask explain=true for: each costs 49 more images through the model.
PREDICT_EXPLAIN_MAX_IMAGES = env.int("PREDICT_EXPLAIN_MAX_IMAGES", default=4)
# Pixels all the images of one prediction request may hold (read from their headers
# before any is decoded); more get 413. Each image alone is bounded by MAX_IMAGE_PIXELS,
# but 16 images of 40 megapixels each cost seconds of CPU: 100 MP is eight 12 MP photos.
PREDICT_MAX_REQUEST_PIXELS = env.int("PREDICT_MAX_REQUEST_PIXELS", default=100_000_000)
# Let anonymous clients call the predict API and page (throttled per IP address).
PREDICT_ALLOW_ANONYMOUS = env_bool("PREDICT_ALLOW_ANONYMOUS", False)
# DRF throttle rates of the predict API: per user, and per IP address for anonymous clients.
PREDICT_THROTTLE_RATE = env.str("PREDICT_THROTTLE_RATE", default="1200/min")
PREDICT_ANON_THROTTLE_RATE = env.str("PREDICT_ANON_THROTTLE_RATE", default="60/min")
# How often (seconds) a serving process checks which version each dataset serves.
PREDICT_RELOAD_SECONDS = env.float("PREDICT_RELOAD_SECONDS", default=0.5)
# Models one serving process keeps loaded (MB of model files), least recently used
# evicted first. A 32 px CNN is well under 1 MB, a MobileNetV2 transfer model about
# 10 MB: 512 MB keeps dozens of datasets' models warm per web process.
PREDICT_MEMORY_MB = env.float("PREDICT_MEMORY_MB", default=512.0)
# A version that fails to load is tried again after this many seconds, doubling up to a minute.
PREDICT_LOAD_RETRY_SECONDS = env.float("PREDICT_LOAD_RETRY_SECONDS", default=2.0)
# auto: serve each model through ONNX Runtime when its answers equal Keras' (within
# 1e-5 on the version's own test images) and it is faster; tensorflow: always Keras.
PREDICT_RUNTIME = env_choice("PREDICT_RUNTIME", "auto", ("auto", "tensorflow"))
# Test images a runtime is checked on when a version loads.
PREDICT_CHECK_IMAGES = env.int("PREDICT_CHECK_IMAGES", default=32)
# TensorFlow and ONNX Runtime threads per serving process. Web servers run a process per core, and one
# small image is no work to split: 1 thread answered faster than TensorFlow's default
# (all cores) here. 0 restores that default, for one process serving a large model.
PREDICT_TF_THREADS = env.int("PREDICT_TF_THREADS", default=1)
# Refuse to promote a version whose macro-F1 is below its dataset's promoted one's
# unless the admin forces it.
PROMOTION_GATE = env_bool("PROMOTION_GATE", True)
# Threads that decode, hash and store images during an import.
IMPORT_THREADS = env.int("IMPORT_THREADS", default=min(4, os.cpu_count() or 1))
# Largest dataset upload (an archive or a batch of files); larger requests get 413.
IMPORT_MAX_UPLOAD_BYTES = env.int("IMPORT_MAX_UPLOAD_BYTES", default=4 * 1024**3)
# Uploads each user may start, page and API together ("none": no limit).
IMPORT_THROTTLE_RATE = env.str("IMPORT_THROTTLE_RATE", default="120/hour")
# Largest image file in an archive, decompressed: larger ones are skipped unread.
IMPORT_MAX_IMAGE_BYTES = env.int("IMPORT_MAX_IMAGE_BYTES", default=64 * 1024**2)
# What an archive may expand to, every decompressed byte counted (skipped members and
# headers too): beyond it the import fails as a zip bomb. A tar is read twice (listed,
# then imported), each pass stopped here.
IMPORT_MAX_EXPANDED_BYTES = env.int("IMPORT_MAX_EXPANDED_BYTES", default=16 * 1024**3)
# Undecoded image bytes an import holds at once (one batch for the threads): with the
# two above, what bounds a worker's memory whatever the archive holds.
IMPORT_BATCH_BYTES = env.int("IMPORT_BATCH_BYTES", default=128 * 1024**2)
# An import that commits no batch of rows for this long lost its worker: the reaper
# (`manage.py reaper`) removes what it wrote and re-queues it, up to IMPORT_MAX_ATTEMPTS
# attempts, then fails it saying why.
IMPORT_STALE_SECONDS = env.int("IMPORT_STALE_SECONDS", default=120)
IMPORT_MAX_ATTEMPTS = env.int("IMPORT_MAX_ATTEMPTS", default=3)
# Uploads beyond FILE_UPLOAD_MAX_MEMORY_SIZE spool to disk here, not in memory.
FILE_UPLOAD_TEMP_DIR = env.str("FILE_UPLOAD_TEMP_DIR", default="") or None

# --- Auth ---------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
# Wrong passwords (django-axes): LOGIN_FAILURE_LIMIT failures in a row for one username from
# one address lock that pair out for LOGIN_LOCKOUT_MINUTES (429); a success resets the count.
# By the pair, so that an attacker elsewhere cannot lock a user out of their own account.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("LOGIN_LOCKOUT_MINUTES", default=15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# --- Security (production) -------------------------------------------------------

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_HTTPS_PROXY", False) else None
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# HSTS preloading binds every subdomain of the owner's domain for months: an opt-in
# for the site owner, not a default, so Django's reminder about it is silenced.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# /healthz and /readyz are probed over plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- REST API -------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # DRF's token authentication, each token's user remembered for 5 s per process.
        "classifier_site.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Services refuse with classifier_site.errors.Refused (400) or Conflict (409), translated here.
    "EXCEPTION_HANDLER": "classifier_site.errors.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "classifier_site API",
    "DESCRIPTION": "Datasets, training jobs, model versions and predictions.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Every background run has the one status type (classifier_site.runs): one enum in the schema.
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "classifier_site.runs.RunStatus",
        "SplitEnum": "datasets.models.Split",  # an image's split, wherever a request or answer names one
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "classifier_site.schema.add_common_responses",  # 401/403/503 on every operation
    ],
}

# --- Celery -----------------------------------------------------------------------------

CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL", default=f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
# The database is the truth about every job; Celery keeps no results.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"trainer.tasks.train_job": {"queue": "gpu"}}
# A task is acknowledged only once done, one at a time, and goes back to the queue
# if its worker dies, so a killed training run is delivered again.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A fresh process per training task frees all GPU memory TensorFlow holds.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_WORKER_MAX_TASKS_PER_CHILD", default=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing fails fast and clearly when the broker is down, instead of hanging a request.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_BROKER_TRANSPORT_OPTIONS = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# The reaper is its own process (`manage.py reaper`, in the Procfile and compose), not a
# beat schedule: it needs only the database, so a broker outage of any length cannot stop
# it (beat's messages went through the broker, and beat never recovered from an outage).
TRAIN_REAP_INTERVAL = env.float("TRAIN_REAP_INTERVAL", default=30.0)
# /readyz fails when the reaper's last pass is older than this: nothing re-queues dead jobs.
REAPER_STALE_SECONDS = env.float("REAPER_STALE_SECONDS", default=max(180.0, 4 * TRAIN_REAP_INTERVAL))

# --- Training ---------------------------------------------------------------------------

# A running job stamps its row every TRAIN_HEARTBEAT_INTERVAL seconds; one silent
# for TRAIN_HEARTBEAT_TIMEOUT is presumed dead and re-queued (it resumes from its
# last epoch's checkpoint) until TRAIN_MAX_ATTEMPTS attempts, then failed.
TRAIN_HEARTBEAT_INTERVAL = env.float("TRAIN_HEARTBEAT_INTERVAL", default=10.0)
TRAIN_HEARTBEAT_TIMEOUT = env.float("TRAIN_HEARTBEAT_TIMEOUT", default=120.0)
TRAIN_MAX_ATTEMPTS = env.int("TRAIN_MAX_ATTEMPTS", default=3)
# A run that has not moved (no batch, no decoded image, no new phase) for the larger of
# TRAIN_STALL_SECONDS and TRAIN_STALL_FACTOR times its longest wait so far is hung: its
# attempt is given up (re-queued, or failed after the last) and its process ends.
TRAIN_STALL_SECONDS = env.float("TRAIN_STALL_SECONDS", default=900.0)
TRAIN_STALL_FACTOR = env.float("TRAIN_STALL_FACTOR", default=20.0)
# Each attempt stops (and fails, saying so) after TRAIN_TIME_LIMIT seconds; one that cannot
# stop is killed by its worker TRAIN_TIME_LIMIT_GRACE seconds later (Celery's hard limit).
TRAIN_TIME_LIMIT = env.float("TRAIN_TIME_LIMIT", default=48 * 3600.0)
TRAIN_TIME_LIMIT_GRACE = env.float("TRAIN_TIME_LIMIT_GRACE", default=600.0)
# A queued job no worker has taken this long after its message was sent may have lost
# it (a purged queue, a broker restored from an old state): the reaper sends it again.
TRAIN_REPUBLISH_SECONDS = env.int("TRAIN_REPUBLISH_SECONDS", default=900)
# How often a running job's checkpoint goes to media storage (and always before a
# hand-back): a job re-queued to another worker resumes from it; 0 stores every epoch.
TRAIN_CHECKPOINT_UPLOAD_SECONDS = env.float("TRAIN_CHECKPOINT_UPLOAD_SECONDS", default=60.0)
# Worker-local: per-epoch checkpoints and the decoded-image cache shared by jobs.
TRAIN_WORK_DIR = Path(env.str("TRAIN_WORK_DIR", default=str(VAR_DIR / "training")))
# The budget of its decoded-image and feature caches (checkpoints of running jobs do not count):
# past it, the least recently used entries go (classifier_site.local_cache).
TRAIN_CACHE_MAX_MB = env.int("TRAIN_CACHE_MAX_MB", default=20480)
# Keras' cache of pretrained weights; read once when Keras is imported, so set here.
KERAS_HOME = env.str("KERAS_HOME", default=str(VAR_DIR / "keras"))
os.environ.setdefault("KERAS_HOME", KERAS_HOME)

# --- Logging -----------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"health_check": {"level": "ERROR"}},
}
