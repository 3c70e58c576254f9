"""Settings of the library example: members, books, loans and reviews, each table in its own
SQLite file in ``LIBRARY_DATA_DIR`` (default: ``db/`` beside manage.py), and Django's own
apps in ``default.db``. Everything crossdb needs is the ``CROSSDB`` dictionary, the router
and the app in ``INSTALLED_APPS``.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LIBRARY_DATA_DIR") or BASE_DIR / "db").expanduser()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = os.environ.get("LIBRARY_DEBUG") == "1"
# An example served on this machine only; set DJANGO_SECRET_KEY anywhere else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "library-example-insecure-key-for-localhost-only")
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "crossdb",
    "library",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "librarysite.urls"

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


def sqlite(name):
    """A SQLite file in DATA_DIR, opened the way crossdb's guard expects: every transaction
    begins IMMEDIATE (crossdb.W001), WAL so readers run beside the writer, a busy timeout."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / f"{name}.db"),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }


DATABASES = {
    "default": sqlite("default"),
    "members_db": sqlite("members"),
    "books_db": sqlite("books"),
    "loans_db": sqlite("loans"),
    "reviews_db": sqlite("reviews"),
}

DATABASE_ROUTERS = ["crossdb.routers.DatabaseRouter"]

CROSSDB = {
    "DATABASES_FOR_MODELS": {
        "library.member": "members_db",
        "library.book": "books_db",
        "library.loan": "loans_db",
        "library.review": "reviews_db",
    },
    "GUARD_TIMEOUT": float(os.environ.get("LIBRARY_GUARD_TIMEOUT", "30")),
    "STATE_DIR": DATA_DIR,
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
