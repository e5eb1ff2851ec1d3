"""Settings shared by every environment. Everything that varies comes from the environment."""

from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from cms.storage import media_storage

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# A local `.env` (see `.env.example`) is read if present; real environment variables win.
environ.Env.read_env(BASE_DIR / ".env")

# Runtime state (SQLite database, embedded queue, media) lives here unless told otherwise.
DATA_DIR = Path(env.str("KARASU_DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env.str("SECRET_KEY", default="")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "cms",
    "generation",
    "huey_tasks",
    "ops",
    "huey.contrib.djhuey",
    "wagtail_modeladmin",
    "wagtail.contrib.forms",
    "wagtail.contrib.redirects",
    "wagtail.embeds",
    "wagtail.sites",
    "wagtail.users",
    "wagtail.snippets",
    "wagtail.documents",
    "wagtail.images",
    "wagtail.search",
    "wagtail.admin",
    "wagtail",
    "modelcluster",
    "taggit",
    "django_filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "wagtail.contrib.redirects.middleware.RedirectMiddleware",
]

ROOT_URLCONF = "cms.urls"
WSGI_APPLICATION = "cms.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite is tuned so that the web process and several worker threads can write at once:
# WAL lets readers and one writer proceed together, IMMEDIATE takes the write lock at BEGIN
# (so a transaction never fails half-way upgrading a read lock), and the timeout makes
# writers wait for each other instead of raising "database is locked".
SQLITE_OPTIONS = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": (
        "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA busy_timeout=30000;"
    ),
}


def database_config(url: str) -> dict:
    """Parse a DATABASE_URL, applying the SQLite tuning above to SQLite files."""
    config = environ.Env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Django's backend, with a process's threads taking turns to write (cms/sqlite3).
        config["ENGINE"] = "cms.sqlite3"
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
    # Persistent connections: a worker thread runs hundreds of short tasks, and opening a
    # connection (with its PRAGMAs) per task costs more than the task's own queries.
    config.setdefault("CONN_MAX_AGE", 300)
    config.setdefault("CONN_HEALTH_CHECKS", True)
    return config


DATABASES = {
    "default": database_config(
        env.str("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'karasu.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
]
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "static")))
STATIC_URL = "/static/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(DATA_DIR / "media")))
MEDIA_URL = "/media/"
# Media (image originals and renditions): the local disk under MEDIA_ROOT, or with
# MEDIA_S3_BUCKET an S3-compatible bucket (cms/storage.py). Credentials are not settings:
# boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN / AWS_PROFILE.
MEDIA_S3_BUCKET = env.str("MEDIA_S3_BUCKET", default="")
STORAGES = {
    "default": media_storage(
        MEDIA_S3_BUCKET,
        endpoint_url=env.str("MEDIA_S3_ENDPOINT_URL", default=""),
        region=env.str("MEDIA_S3_REGION", default=""),
        public_url=env.str("MEDIA_S3_PUBLIC_URL", default=""),
        addressing_style=env.str("MEDIA_S3_ADDRESSING_STYLE", default=""),
    ),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
DATA_UPLOAD_MAX_NUMBER_FIELDS = 10_000

# Wagtail
WAGTAIL_SITE_NAME = "Karasu"
WAGTAILADMIN_BASE_URL = env.str("WAGTAILADMIN_BASE_URL", default="http://127.0.0.1:8000")
WAGTAILIMAGES_IMAGE_MODEL = "cms.KarasuImage"
WAGTAILSEARCH_BACKENDS = {"default": {"BACKEND": "wagtail.search.backends.database"}}
WAGTAILDOCS_EXTENSIONS = ["csv", "docx", "key", "odt", "pdf", "pptx", "rtf", "txt", "xlsx", "zip"]

# Queue: MongoDB when MONGODB_URI is set, otherwise an embedded SQLite file beside the
# database. Immediate mode is never switched on implicitly (djhuey would do so when DEBUG).
MONGODB_URI = env.str("MONGODB_URI", default="")
HUEY_QUEUE_FILE = Path(env.str("KARASU_QUEUE_FILE", default=str(DATA_DIR / "queue.sqlite3")))
HUEY = {
    "name": "karasu",
    "immediate": False,
    "results": True,
    # Leases: a killed worker's task is delivered again this long after its last heartbeat;
    # a message delivered this many times without finishing goes to the dead letters.
    "lease_seconds": env.float("KARASU_LEASE_SECONDS", default=30.0),
    "max_deliveries": env.int("KARASU_MAX_DELIVERIES", default=5),
    # A hard limit per task: past it the heartbeat stops keeping its leases and slot, and
    # its job fails as timed out. Above the providers' own timeouts (fal: 180 s + download).
    "task_deadline": env.float("KARASU_TASK_DEADLINE", default=300.0),
    # One idle thread per worker process looks at the queue this often (the others sleep
    # until there is work), so new work starts within it: 10 light queries a second.
    "idle_poll": env.float("KARASU_IDLE_POLL", default=0.1),
    # Threads suit I/O-bound generation: a worker mostly waits on a provider. SIGTERM (what
    # process managers send) finishes running tasks for up to KARASU_SHUTDOWN_TIMEOUT seconds,
    # then exits; SIGINT exits at once. Tasks still running then are delivered again once
    # their leases run out (never while they may still run).
    "consumer": {
        "workers": env.int("KARASU_WORKERS", default=20),
        "worker_type": "thread",
        "graceful_signal": "TERM",
        "shutdown_timeout": env.float("KARASU_SHUTDOWN_TIMEOUT", default=30.0),
    },
}
# Wagtail's own background tasks (search and reference index, file deletion, focal points)
# run on the same Huey queue, so one worker fleet and one monitor cover everything; those of
# an image a worker files run in that worker instead (see huey_tasks.task_backend).
TASKS = {
    "default": {
        "BACKEND": "huey_tasks.task_backend.FollowUpTaskBackend",
        "ENQUEUE_ON_COMMIT": True,
    }
}
if MONGODB_URI:
    HUEY.update(huey_class="huey_tasks.queue.MongoLeasingHuey", url=MONGODB_URI)
else:
    HUEY.update(huey_class="huey_tasks.queue.SqliteLeasingHuey", filename=str(HUEY_QUEUE_FILE))

# Provider credentials: read from the environment only, never stored in the database.
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1")
FAL_KEY = env.str("FAL_KEY", default="")

# GET /metrics (Prometheus) answers only with "Authorization: Bearer <this>"; unset: 404.
KARASU_METRICS_TOKEN = env.str("KARASU_METRICS_TOKEN", default="")


def env_usd(name: str) -> Decimal | None:
    """An optional USD amount from the environment, exact (Decimal); None when unset."""
    value = env.str(name, default="").strip()
    if not value:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be an amount in USD, not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ImproperlyConfigured(f"{name} must be a positive amount in USD, not {value!r}")
    if amount != amount.quantize(Decimal("0.0001")):
        raise ImproperlyConfigured(f"{name} has more than 4 decimal places: {value!r}")
    return amount


# Providers, by name (as wagtail-ai configures its backends). A provider whose key is not
# set is not offered; without keys the offline demo providers are the defaults.
FAL_RESULT_HOSTS = ["fal.media", "*.fal.media", "fal.run", "*.fal.run", "storage.googleapis.com"]
KARASU = {
    "LLMS": {
        "demo": {"CLASS": "generation.providers.demo.DemoLLM", "LABEL": "Demo (offline)"},
        "claude": {
            "CLASS": "generation.providers.claude.ClaudeLLM",
            "LABEL": "Claude",
            "MODEL": env.str("KARASU_CLAUDE_MODEL", default="claude-sonnet-4-6"),
            "MAX_TOKENS": 8192,
            "BATCH_SIZE": 25,
            "TIMEOUT": 120,
            "MAX_RETRIES": 2,
        },
        "openai": {
            "CLASS": "generation.providers.openai_compatible.OpenAICompatibleLLM",
            "LABEL": "OpenAI-compatible",
            "MODEL": env.str("KARASU_OPENAI_MODEL", default="gpt-4o-mini"),
            "BATCH_SIZE": 25,
            "TIMEOUT": 120,
            "MAX_RETRIES": 2,
        },
    },
    # PRICE: USD per image as a decimal string (at most 4 places), used for estimates, spend
    # and budgets (generation/costs.py). Defaults are fal.ai's list prices as of 2026-11-30;
    # megapixel-priced models (the FLUX ones) are priced at their largest Karasu size,
    # 1024x1024, which fal bills as 1 MP. Check https://fal.ai/pricing and override as needed.
    "IMAGE_MODELS": {
        "demo": {
            "CLASS": "generation.providers.demo.DemoImageModel",
            "LABEL": "Demo (offline)",
            "LATENCY": env.float("KARASU_DEMO_LATENCY", default=0.0),
            "FAILURE_RATE": env.float("KARASU_DEMO_FAILURE_RATE", default=0.0),
            "REJECT_RATE": env.float("KARASU_DEMO_REJECT_RATE", default=0.0),
            "CONCURRENCY": env.int("KARASU_DEMO_CONCURRENCY", default=16),
            # At most this many transient failures in a row per prompt (0: no cap).
            "MAX_FAILURE_STREAK": env.int("KARASU_DEMO_MAX_FAILURE_STREAK", default=2),
            # Appends a line per call start and end (tests count calls per job with it).
            "CALL_LOG": env.str("KARASU_DEMO_CALL_LOG", default=""),
            # Output size (the 1:1 edge; other aspect ratios scale from it) and jpeg or png:
            # 1024 jpeg is like FLUX square_hd, 2048 png like Nano Banana Pro at 2K.
            "SIZE": env.int("KARASU_DEMO_SIZE", default=512),
            "FORMAT": env.str("KARASU_DEMO_FORMAT", default="jpeg"),
            # Free by default; set it to see the accounting offline (generation/costs.py).
            "PRICE": env.str("KARASU_DEMO_PRICE", default="0"),
        },
        "flux-schnell": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "FLUX.1 [schnell]",
            "PRICE": "0.003",  # $0.003/MP; 1024x1024 (square_hd, the largest size used) = 1 MP
            "ENDPOINT": "fal-ai/flux/schnell",
            "ARGUMENTS": "flux",
            "CONCURRENCY": 8,
        },
        "flux-dev": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "FLUX.1 [dev]",
            "PRICE": "0.025",  # $0.025/MP at 1024x1024
            "ENDPOINT": "fal-ai/flux/dev",
            "ARGUMENTS": "flux",
            "CONCURRENCY": 8,
        },
        "flux-pro": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "FLUX1.1 [pro]",
            "PRICE": "0.04",  # $0.04/MP at 1024x1024
            "ENDPOINT": "fal-ai/flux-pro/v1.1",
            "ARGUMENTS": "flux-pro",
            "CONCURRENCY": 4,
        },
        "flux-ultra": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "FLUX1.1 [pro] ultra",
            "PRICE": "0.06",  # per image (up to 4 MP)
            "ENDPOINT": "fal-ai/flux-pro/v1.1-ultra",
            "ARGUMENTS": "flux-ultra",
            "CONCURRENCY": 4,
        },
        "nano-banana": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "Nano Banana",
            "PRICE": "0.039",  # per image
            "ENDPOINT": "fal-ai/nano-banana",
            "ARGUMENTS": "nano-banana",
            "CONCURRENCY": 4,
            "REQUESTS_PER_MINUTE": 60,
        },
        "nano-banana-pro": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "Nano Banana Pro",
            "PRICE": "0.15",  # per image at 1K/2K; fal bills 4K double (PRICE_4K)
            "PRICE_4K": "0.30",
            "ENDPOINT": "fal-ai/nano-banana-pro",
            "ARGUMENTS": "nano-banana-pro",
            # 1K, 2K or 4K (fal charges 4K double); results are PNG unless OUTPUT_FORMAT.
            "RESOLUTION": "1K",
            # A 4K PNG can weigh more than the shared 25 MB download cap.
            "MAX_BYTES": 64 * 1024 * 1024,
            "CONCURRENCY": 4,
            "REQUESTS_PER_MINUTE": 60,
        },
        # Image-editing models: variations of a library image (a request's source image,
        # uploaded to fal's CDN through fal-client). They make no image from a prompt alone.
        "nano-banana-edit": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "Nano Banana edit",
            "PRICE": "0.039",  # per image
            "ENDPOINT": "fal-ai/nano-banana/edit",
            "ARGUMENTS": "nano-banana-edit",
            "CONCURRENCY": 4,
            "REQUESTS_PER_MINUTE": 60,
        },
        "flux-kontext": {
            "CLASS": "generation.providers.fal.FalImageModel",
            "LABEL": "FLUX.1 Kontext [pro] (edit)",
            "PRICE": "0.04",  # per image
            "ENDPOINT": "fal-ai/flux-pro/kontext",
            "ARGUMENTS": "flux-kontext",
            "CONCURRENCY": 4,
        },
    },
    # Budgets in USD (unset: no limit). A request whose estimate is above MAX_REQUEST_COST, or
    # would take this month's spend and open requests above MAX_MONTHLY_COST, is refused.
    "MAX_REQUEST_COST": env_usd("KARASU_MAX_REQUEST_COST"),
    "MAX_MONTHLY_COST": env_usd("KARASU_MAX_MONTHLY_COST"),
    # The TaskRun ledger behind the job monitor (KARASU_LEDGER=false switches it off).
    "LEDGER": env.bool("KARASU_LEDGER", default=True),
    "DEFAULT_LLM": "claude" if ANTHROPIC_API_KEY else ("openai" if OPENAI_API_KEY else "demo"),
    "DEFAULT_IMAGE_MODEL": "flux-schnell" if FAL_KEY else "demo",
    "DOWNLOAD": {
        "ALLOWED_HOSTS": env.list("KARASU_DOWNLOAD_HOSTS", default=FAL_RESULT_HOSTS),
        "MAX_BYTES": 25 * 1024 * 1024,
        "MAX_PIXELS": 40_000_000,
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # On the handler, not a logger: records propagating from any logger pass through it.
    "filters": {"redact_secrets": {"()": "generation.providers.errors.RedactSecretsFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Configured here so run_huey does not attach a second handler of its own.
        "huey": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Django's own handlers for these (DEBUG's console, runserver's) do not redact:
        # their records go to the root's console instead.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
