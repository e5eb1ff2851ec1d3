"""Settings shared by every environment. Everything that varies comes from the environment."""

from datetime import timedelta
from pathlib import Path

import environ
from django.utils.translation import gettext_lazy as _

from cms.setting_ranges import EnvNumbers
from cms.storage import media_storage

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# A local `.env` (see `.env.example`) is read if present; real environment variables win.
environ.Env.read_env(BASE_DIR / ".env")
# Every numeric KARASU_* variable is read through this, with its allowed range beside it. A
# value out of range (nan, inf, a negative or a zero where none makes sense) is listed in
# KARASU_INVALID_SETTINGS, and the system check cms.E001 (cms/checks.py) refuses to start.
NUMBERS = EnvNumbers()
number = NUMBERS.read
KARASU_INVALID_SETTINGS = NUMBERS.errors

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
    "articles",
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
    "axes",
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
    # Last, as django-axes asks: it turns a locked-out sign-in into the lock-out page.
    "axes.middleware.AxesMiddleware",
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
    if config["ENGINE"] == "django.db.backends.postgresql":
        # A server that vanishes (a failover, a dropped route) is noticed in seconds rather
        # than after the kernel's TCP timeouts: a worker waits out the outage, not a hang.
        config["OPTIONS"] = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            **config.get("OPTIONS", {}),
        }
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
# Karasu's own strings (its screens, messages and commands) in one catalogue per language:
# locale/<language>/LC_MESSAGES/django.po, compiled to django.mo and committed, as Wagtail's
# packages ship theirs, so running Karasu needs no gettext tools (CONTRIBUTING.md).
LOCALE_PATHS = [BASE_DIR / "locale"]
# The admin languages an editor may choose (Account → Preferences): those Karasu's screens
# are translated into, so that Wagtail's screens and Karasu's never mix two languages.
# Wagtail's admin activates the editor's choice itself.
WAGTAILADMIN_PERMITTED_LANGUAGES = [
    ("en", "English"),
    ("zh-hans", "简体中文"),
    ("ja", "日本語"),
]
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
WAGTAILSEARCH_BACKENDS = {"default": {"BACKEND": "cms.search"}}
WAGTAILDOCS_EXTENSIONS = ["csv", "docx", "key", "odt", "pdf", "pptx", "rtf", "txt", "xlsx", "zip"]

# Queue: MongoDB when MONGODB_URI is set, otherwise an embedded SQLite file beside the
# database. Immediate mode is never switched on implicitly (djhuey would do so when DEBUG).
MONGODB_URI = env.str("MONGODB_URI", default="")
HUEY_QUEUE_FILE = Path(env.str("KARASU_QUEUE_FILE", default=str(DATA_DIR / "queue.sqlite3")))
HUEY = {
    "name": "karasu",
    "immediate": False,
    "results": True,
    # A killed worker's task is delivered again this long after its last heartbeat, and a
    # message delivered this many times without finishing goes to the dead letters. The
    # heartbeat beats every third of a lease and bounds its MongoDB calls by that. Under 3 s
    # a heartbeat has less than a second, and a busy server would let every lease lapse.
    "lease_seconds": number("KARASU_LEASE_SECONDS", 30.0, minimum=3, maximum=3600, unit="seconds"),
    "max_deliveries": number("KARASU_MAX_DELIVERIES", 5, minimum=1, maximum=1000),
    # A hard limit per task. Past it the heartbeat stops keeping its leases and slot, and
    # its job fails as timed out. It must exceed the providers' own timeouts (fal: 180 s plus
    # the download); under 10 s no real provider call could finish.
    "task_deadline": number(
        "KARASU_TASK_DEADLINE", 300.0, minimum=10, maximum=86400, unit="seconds"
    ),
    # A task that cannot reach the database (or media) hands its message back uncounted,
    # after a back-off that doubles while the outage lasts, up to this many seconds, so the
    # backlog resumes within about this long after an outage. It is at least the first
    # back-off (1 s); below that, tasks would come straight back and hammer a database that
    # is down.
    "outage_backoff_max": number(
        "KARASU_OUTAGE_BACKOFF_MAX", 30.0, minimum=1, maximum=3600, unit="seconds"
    ),
    # One idle thread per worker process looks at the queue this often (the others sleep
    # until there is work), so new work starts within it; the default makes 10 light
    # queries a second. It is at least 0.01 s (100 a second), because any shorter the idle
    # thread would spin on the queue.
    "idle_poll": number("KARASU_IDLE_POLL", 0.1, minimum=0.01, maximum=60, unit="seconds"),
    # Threads suit I/O-bound generation, as a worker mostly waits on a provider. SIGTERM (what
    # process managers send) finishes running tasks for up to KARASU_SHUTDOWN_TIMEOUT seconds,
    # then exits; SIGINT exits at once. Tasks still running then are delivered again once
    # their leases run out (never while they may still run). The timeout is at least 1 s:
    # under 10 s the worker hands its provider waits back halfway through, and giving back
    # their jobs and messages needs a moment of its own.
    "consumer": {
        # 32 leaves room for an LLM's 8 parallel calls beside 16 image calls and follow-ups.
        "workers": number("KARASU_WORKERS", 32, minimum=1, maximum=1000),
        "worker_type": "thread",
        "graceful_signal": "TERM",
        "shutdown_timeout": number(
            "KARASU_SHUTDOWN_TIMEOUT", 30.0, minimum=1, maximum=86400, unit="seconds"
        ),
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

# GET /metrics (Prometheus) answers only with "Authorization: Bearer <this>", else 404.
KARASU_METRICS_TOKEN = env.str("KARASU_METRICS_TOKEN", default="")


# Sign-in throttling (django-axes, ops/logins.py): failed sign-ins are counted per user name
# and per address; once either has KARASU_LOGIN_FAILURE_LIMIT within the cool-off, both are
# refused (429) until KARASU_LOGIN_COOLOFF_MINUTES have passed since the last failure, or a
# superuser lifts the lock in Settings > Login lock-outs.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first, so it refuses locked-out sign-ins
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = NUMBERS.read("KARASU_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
# At least a minute, as the lock-out page says "try again in N minutes", and a cool-off of
# seconds would let a guesser go on at several tries a second per user name and address.
AXES_COOLOFF_TIME = timedelta(
    minutes=NUMBERS.read(
        "KARASU_LOGIN_COOLOFF_MINUTES", 15.0, minimum=1, maximum=7 * 24 * 60, unit="minutes"
    )
)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Failures are not cleared by a success, because axes would forget every failure from the
# address too. Anyone with an account could then sign in between guesses at another user
# name and keep guessing.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "ops.logins.lockout_response"
AXES_CLIENT_IP_CALLABLE = "ops.logins.client_ip_address"
# Failures are what is needed; a log of every successful sign-in would only grow.
AXES_DISABLE_ACCESS_LOG = True
# Axes' screens are Django admin ones, which Karasu does not serve (see ops/logins.py).
AXES_ENABLE_ADMIN = False
# No start-up banner: commands (worker_health, generate) print only their own lines.
AXES_VERBOSE = False
# How many reverse proxies in front of the web process append to X-Forwarded-For. The
# client's address is the one the outermost proxy wrote; with 0 it is the connection's own.
KARASU_PROXY_COUNT = NUMBERS.read("KARASU_PROXY_COUNT", 0, minimum=0, maximum=10)


# Providers, by name (as wagtail-ai configures its backends). A provider whose key is not
# set is not offered; without keys the offline demo providers are the defaults.
FAL_RESULT_HOSTS = ["fal.media", "*.fal.media", "fal.run", "*.fal.run", "storage.googleapis.com"]
KARASU = {
    "LLMS": {
        "demo": {"CLASS": "generation.providers.demo.DemoLLM", "LABEL": _("Demo (offline)")},
        "claude": {
            "CLASS": "generation.providers.claude.ClaudeLLM",
            "LABEL": "Claude",
            "MODEL": env.str("KARASU_CLAUDE_MODEL", default="claude-sonnet-4-6"),
            "MAX_TOKENS": 8192,
            "BATCH_SIZE": 25,
            # Calls in flight at once across all workers. REQUESTS_PER_MINUTE is optional.
            "CONCURRENCY": number("KARASU_CLAUDE_CONCURRENCY", 8, minimum=1, maximum=1000),
            "TIMEOUT": 120,
            "MAX_RETRIES": 2,
        },
        "openai": {
            "CLASS": "generation.providers.openai_compatible.OpenAICompatibleLLM",
            "LABEL": "OpenAI-compatible",
            "MODEL": env.str("KARASU_OPENAI_MODEL", default="gpt-4o-mini"),
            "BATCH_SIZE": 25,
            "CONCURRENCY": number("KARASU_OPENAI_CONCURRENCY", 8, minimum=1, maximum=1000),
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
            "LABEL": _("Demo (offline)"),
            "LATENCY": number("KARASU_DEMO_LATENCY", 0.0, minimum=0, maximum=3600, unit="seconds"),
            "FAILURE_RATE": number("KARASU_DEMO_FAILURE_RATE", 0.0, minimum=0, maximum=1),
            "REJECT_RATE": number("KARASU_DEMO_REJECT_RATE", 0.0, minimum=0, maximum=1),
            "CONCURRENCY": number("KARASU_DEMO_CONCURRENCY", 16, minimum=1, maximum=1000),
            # At most this many transient failures in a row per prompt (0: no cap).
            "MAX_FAILURE_STREAK": number(
                "KARASU_DEMO_MAX_FAILURE_STREAK", 2, minimum=0, maximum=1000
            ),
            # Appends a line per call start and end (tests count calls per job with it).
            "CALL_LOG": env.str("KARASU_DEMO_CALL_LOG", default=""),
            # The demo queue's submitted requests, shared by the host's workers so that one
            # resumes what another submitted (default: KARASU_DATA_DIR/demo-provider).
            "STATE_DIR": env.str("KARASU_DEMO_STATE_DIR", default=""),
            # Output size (the 1:1 edge; other aspect ratios scale from it) and jpeg or png:
            # 1024 jpeg is like FLUX square_hd, 2048 png like Nano Banana Pro at 2K.
            "SIZE": number("KARASU_DEMO_SIZE", 512, minimum=64, maximum=4096, unit="pixels"),
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
        # Image-editing models make variations of a library image (a request's source image,
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
    "MAX_REQUEST_COST": NUMBERS.usd("KARASU_MAX_REQUEST_COST"),
    "MAX_MONTHLY_COST": NUMBERS.usd("KARASU_MAX_MONTHLY_COST"),
    # The TaskRun ledger behind the job monitor (KARASU_LEDGER=false switches it off).
    "LEDGER": env.bool("KARASU_LEDGER", default=True),
    # The languages the LLM writes in: image prompts in the one image models follow best,
    # alt texts in the site's (a code such as "ja" or "zh-hans", or a name). Without
    # KARASU_ALT_TEXT_LANGUAGE each alt text is in its theme's language.
    # Anything else (a line break, a sentence) is refused by the check cms.E001.
    "PROMPT_LANGUAGE": NUMBERS.language("KARASU_PROMPT_LANGUAGE", "en", unset="en"),
    "ALT_TEXT_LANGUAGE": NUMBERS.language(
        "KARASU_ALT_TEXT_LANGUAGE", "", unset="each theme's own language"
    ),
    "DEFAULT_LLM": "claude" if ANTHROPIC_API_KEY else ("openai" if OPENAI_API_KEY else "demo"),
    "DEFAULT_IMAGE_MODEL": "flux-schnell" if FAL_KEY else "demo",
    "DOWNLOAD": {
        "ALLOWED_HOSTS": env.list("KARASU_DOWNLOAD_HOSTS", default=FAL_RESULT_HOSTS),
        "MAX_BYTES": 25 * 1024 * 1024,
        "MAX_PIXELS": 40_000_000,
    },
    # C2PA manifests on generated originals (cms/provenance). The certificate chain and the
    # private key are PEM, inline (a literal \n stands for a line break) or in a file (the
    # _FILE variables, read when an image is signed). Neither set: nothing is signed; the
    # files are marked in XMP all the same.
    "C2PA": {
        "CERTIFICATE": env.str("KARASU_C2PA_CERTIFICATE", default="", multiline=True),
        "CERTIFICATE_FILE": env.str("KARASU_C2PA_CERTIFICATE_FILE", default=""),
        "PRIVATE_KEY": env.str("KARASU_C2PA_PRIVATE_KEY", default="", multiline=True),
        "PRIVATE_KEY_FILE": env.str("KARASU_C2PA_PRIVATE_KEY_FILE", default=""),
        # Unset: the one that goes with the key (es256 for a P-256 key, ps256 for RSA...).
        "ALGORITHM": env.str("KARASU_C2PA_ALGORITHM", default=""),
        # An RFC 3161 time-stamp authority; unset, manifests carry no trusted time.
        "TSA_URL": env.str("KARASU_C2PA_TSA_URL", default=""),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Set on the handler, not a logger, so records propagating from any logger pass it.
    "filters": {"redact_secrets": {"()": "cms.redaction.RedactSecretsFilter"}},
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
        # Django's own handlers for these (DEBUG's console, runserver's) do not redact, so
        # their records go to the root's console instead.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
