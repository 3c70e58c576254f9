"""Settings for multids: four database aliases, each configured from the environment.

Aliases and where they point by default (SQLite files in ``MULTIDS_DATA_DIR``, which
defaults to the repository root):

==============  ===========================  ==============================
alias           file                         environment variable for a URL
==============  ===========================  ==============================
``default``     ``default.db``               ``DATABASE_URL``
``users_db``    ``users.db``                 ``USERS_DATABASE_URL``
``orders_db``   ``orders.db``                ``ORDERS_DATABASE_URL``
``products_db`` ``products.db``              ``PRODUCTS_DATABASE_URL``
==============  ===========================  ==============================

A URL (``postgres://user@host:5432/name`` or ``sqlite:////abs/path.db``) replaces the file.
Every SQLite connection, file or URL, gets WAL, ``synchronous=NORMAL``, a busy timeout and
``BEGIN IMMEDIATE`` transactions, so concurrent writers queue instead of failing with
"database is locked".
"""

import importlib.util
import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name, default=False):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be 1/true/yes/on or 0/false/no/off (got {value!r})")


DEBUG = _env_flag("MULTIDS_DEBUG")

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
    if h.strip()
]
# The repository's key: public, so anything signed with it (sessions, the messages cookie,
# password reset links) can be forged by anyone. It is used only where nobody else can reach
# the site: with DEBUG on, or when every allowed host is this machine.
DEVELOPMENT_SECRET_KEY = "multids-insecure-development-key-set-DJANGO_SECRET_KEY-in-production"
LOCAL_HOSTS = frozenset({"localhost", ".localhost", "127.0.0.1", "::1", "[::1]"})
# Production (HTTPS only, HSTS, secure cookies: below) is the default as soon as a host other
# than this machine is allowed, unless DEBUG says this is a developer's machine: forgetting
# MULTIDS_PRODUCTION=1 must not serve a public host over plain HTTP. Turning it off for such
# a host takes an explicit MULTIDS_PRODUCTION=0 (and check --deploy then warns).
PRODUCTION = _env_flag(
    "MULTIDS_PRODUCTION", default=bool(set(ALLOWED_HOSTS) - LOCAL_HOSTS) and not DEBUG
)
_GENERATE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(50))'"


def secret_key(env, *, debug, production, allowed_hosts):
    """Return the SECRET_KEY to use, or refuse (ImproperlyConfigured) when it would be unsafe."""
    key = env.get("DJANGO_SECRET_KEY", "")
    remote = sorted(set(allowed_hosts) - LOCAL_HOSTS)
    if key == DEVELOPMENT_SECRET_KEY and (production or (remote and not debug)):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is the development key published in this repository; "
            f"set a secret one (generate it with: {_GENERATE_KEY})"
        )
    if key:
        return key
    if remote and not debug:  # production by default too: name the host, the reason
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY must be set: DJANGO_ALLOWED_HOSTS names {', '.join(remote)}, "
            "which other machines can reach, and the development key is public "
            f"(generate one with: {_GENERATE_KEY})"
        )
    if production:
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY must be set when MULTIDS_PRODUCTION=1 (generate one with: "
            f"{_GENERATE_KEY})"
        )
    return DEVELOPMENT_SECRET_KEY


SECRET_KEY = secret_key(os.environ, debug=DEBUG, production=PRODUCTION, allowed_hosts=ALLOWED_HOSTS)

# --- Security ----------------------------------------------------------------------------
# Every page needs a staff login (the admin's own, or staff_member_required on the overview)
# and CsrfViewMiddleware protects every form. MULTIDS_PRODUCTION=1 means "served to other
# people over HTTPS": cookies travel over HTTPS only, plain HTTP is redirected, browsers are
# told to insist on HTTPS for a year (HSTS), and `manage.py check --deploy` has nothing to
# say (tests/test_security.py). Behind a proxy that ends TLS, also set
# MULTIDS_HTTPS_PROXY=1 so Django trusts its X-Forwarded-Proto header instead of
# redirecting forever.
BEHIND_HTTPS_PROXY = _env_flag("MULTIDS_HTTPS_PROXY")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured(
        "MULTIDS_DEBUG=1 shows tracebacks and settings to every visitor; "
        "unset it when MULTIDS_PRODUCTION=1"
    )
LOGIN_URL = "admin:login"
# Failed logins are logged (account, address) and throttled per account and per address
# (core.logins); the backend refuses a throttled attempt before checking its password.
AUTHENTICATION_BACKENDS = ["core.logins.ThrottledModelBackend"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = 31_536_000  # one year
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if BEHIND_HTTPS_PROXY:
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The debug page (MULTIDS_DEBUG=1) lists the environment, *_DATABASE_URL and their
# passwords included; this filter hides them (and any password inside a URL).
DEFAULT_EXCEPTION_REPORTER_FILTER = "core.security.DatabaseUrlHidingFilter"
# --- End of security ----------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "crossdb",  # the machinery: references across databases, the guard, the loader
    "core",  # the shop: users, products, orders
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Read-your-writes on replicas: a request sees its session's writes (crossdb.causal).
    "crossdb.middleware.CausalReadsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.security.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "multids.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

WSGI_APPLICATION = "multids.wsgi.application"

# --- Databases ---------------------------------------------------------------------------

DATA_DIR = Path(os.environ.get("MULTIDS_DATA_DIR") or BASE_DIR).expanduser()

# alias -> (environment variable holding a URL, SQLite file name used without one)
DATABASE_SOURCES = {
    "default": ("DATABASE_URL", "default.db"),
    "users_db": ("USERS_DATABASE_URL", "users.db"),
    "orders_db": ("ORDERS_DATABASE_URL", "orders.db"),
    "products_db": ("PRODUCTS_DATABASE_URL", "products.db"),
}

SQLITE_BUSY_TIMEOUT_SECONDS = 30


def _env_seconds(name, default):
    """A positive number of seconds from the environment."""
    text = os.environ.get(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ImproperlyConfigured(f"{name} must be a number of seconds above 0 (got {text!r})")
    return value


def _env_megabytes(name, default):
    """A setting in whole megabytes from the environment (0 or more)."""
    text = os.environ.get(name, str(default))
    if not text.strip().isdigit():
        raise ImproperlyConfigured(
            f"{name} must be a whole number of megabytes, 0 or more (got {text!r})"
        )
    return int(text)


SQLITE_OPTIONS = {
    # Django 5.1+: every transaction.atomic() opens with BEGIN IMMEDIATE, so a writer takes
    # the write lock up front and waits out the busy timeout instead of failing mid-way.
    "transaction_mode": "IMMEDIATE",
    "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
    # WAL lets readers run beside the writer; NORMAL is crash-safe in WAL mode (only a power
    # cut can lose the last commits). Run on every new connection.
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
}


def database_config(alias, env=os.environ):
    """Return the DATABASES entry for alias: the URL from its variable, else a SQLite file."""
    variable, filename = DATABASE_SOURCES[alias]
    url = env.get(variable, "").strip()
    if url:
        try:
            config = dj_database_url.parse(url, conn_max_age=0)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{variable} is not a valid database URL: {exc}") from exc
        if not config.get("ENGINE"):
            raise ImproperlyConfigured(f"{variable} names an unknown database scheme: {url!r}")
    else:
        config = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / filename),
        }
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config.setdefault("OPTIONS", {}).update(SQLITE_OPTIONS)
        name = Path(str(config["NAME"]))
        # Tests need files (writer processes cannot share an in-memory database).
        config["TEST"] = {"NAME": str(name.with_name(f"test_{name.name}"))}
    return config


DATABASES = {alias: database_config(alias) for alias in DATABASE_SOURCES}


def replica_variable(alias):
    """The variable listing alias's replicas: ``ORDERS_DATABASE_URL`` ->
    ``ORDERS_DATABASE_REPLICA_URLS``."""
    return DATABASE_SOURCES[alias][0].removesuffix("_URL") + "_REPLICA_URLS"


def replica_databases(databases, env=os.environ):
    """({replica alias: DATABASES entry}, {primary alias: [replica aliases]}) from each
    alias's ``*_DATABASE_REPLICA_URLS`` (comma-separated PostgreSQL URLs; none: no replica).

    A replica is read through crossdb's replica backend (a read it fails is served by the
    primary) and, in tests, mirrors its primary's test database."""
    entries: dict[str, Any] = {}
    by_primary: dict[str, list[str]] = {}
    for alias, primary in databases.items():
        variable = replica_variable(alias)
        urls = [u.strip() for u in env.get(variable, "").split(",") if u.strip()]
        if not urls:
            continue
        if primary["ENGINE"] != "django.db.backends.postgresql":
            raise ImproperlyConfigured(
                f"{variable} lists replicas, but {DATABASE_SOURCES[alias][0]} is not a "
                "PostgreSQL URL: streaming replicas need a PostgreSQL primary"
            )
        for number, url in enumerate(urls, 1):
            try:
                config = dj_database_url.parse(url, conn_max_age=0)
            except ValueError as exc:
                raise ImproperlyConfigured(
                    f"{variable}: {url!r} is not a valid URL: {exc}"
                ) from exc
            if config.get("ENGINE") != "django.db.backends.postgresql":
                raise ImproperlyConfigured(
                    f"{variable}: {url!r} is not a PostgreSQL URL (a replica streams from a "
                    "PostgreSQL primary)"
                )
            config["ENGINE"] = "crossdb.backends.replica"
            config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 2)
            config["TEST"] = {"MIRROR": alias}
            entries[f"{alias}_replica_{number}"] = config
            by_primary.setdefault(alias, []).append(f"{alias}_replica_{number}")
    return entries, by_primary


REPLICA_DATABASES, REPLICAS = replica_databases(DATABASES)
DATABASES.update(REPLICA_DATABASES)

DATABASE_ROUTERS = ["crossdb.routers.DatabaseRouter"]

# crossdb's settings (crossdb.conf has each one's default). DATABASES_FOR_MODELS says which
# model lives in which database ("app_label.modelname" -> alias), for the router and the
# table registry: a model added here with its alias in DATABASE_SOURCES is loaded, guarded
# and checked like the others. The numbers come from the environment (README, Configuration).
CROSSDB = {
    "DATABASES_FOR_MODELS": {
        "core.user": "users_db",
        "core.product": "products_db",
        "core.order": "orders_db",
    },
    # How long a delete, check_integrity, an admin save or any other guarded write waits for
    # the reference guard (or a lock a load or a delete holds) before it gives up.
    "GUARD_TIMEOUT": _env_seconds("MULTIDS_GUARD_TIMEOUT", 30),
    # SQLite: index updates for random keys thrash the 2 MB default page cache; 64 MB made a
    # million-order load 40% faster (make bench).
    "WRITER_CACHE_MB": _env_megabytes("MULTIDS_WRITER_CACHE_MB", 64),
    # PostgreSQL: a load into an empty table takes up to this much of it into one
    # transaction and builds its primary key at the commit; 0 commits batch by batch.
    "LOAD_SEGMENT_MB": _env_megabytes("MULTIDS_LOAD_SEGMENT_MB", 40),
    "DEFAULT_SOURCE": "core.sources.demo_source",  # insert_data with no --from
    "GENERATOR": "core.sources.synthetic.generated",  # insert_data --users N ...
    "STATE_DIR": DATA_DIR,  # the overview's throttle file
    # Read replicas from *_DATABASE_REPLICA_URLS (README, Read replicas); reads are causal
    # (crossdb.causal) unless MULTIDS_CAUSAL_READS=0.
    "REPLICAS": REPLICAS,
    "CAUSAL_READS": _env_flag("MULTIDS_CAUSAL_READS", default=True),
    "CAUSAL_WAIT_SECONDS": _env_seconds("MULTIDS_CAUSAL_WAIT_SECONDS", 2),
    "REPLICA_MAX_LAG_SECONDS": _env_seconds("MULTIDS_REPLICA_MAX_LAG_SECONDS", 60),
    "REPLICA_MAX_LAG_BYTES": _env_megabytes("MULTIDS_REPLICA_MAX_LAG_MB", 8) * 1024 * 1024,
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- The rest ------------------------------------------------------------------------------

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

STATIC_URL = "static/"
# Where collectstatic puts the admin's CSS and JS for a production server.
STATIC_ROOT = Path(os.environ.get("MULTIDS_STATIC_ROOT") or BASE_DIR / "staticfiles")
# In production the server itself serves them, through WhiteNoise (the `serve` extra), so
# gunicorn alone is a whole site; without it, have the HTTPS proxy serve STATIC_ROOT.
if PRODUCTION and importlib.util.find_spec("whitenoise"):
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

# django.request logs every 500 with its traceback, but Django's default sends it to the
# console only with DEBUG on (and otherwise to ADMINS by mail, which we do not configure):
# a 500 in production would leave no trace. Here it goes to stderr in every mode, and so do
# django.security's warnings (refused hosts, refused admin URL lookups).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},  # stderr
    "loggers": {
        "core": {"handlers": ["console"], "level": os.environ.get("MULTIDS_LOG_LEVEL", "WARNING")},
        # crossdb: a replica skipped or used again, one line each (crossdb.replicas).
        "crossdb": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.security": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
