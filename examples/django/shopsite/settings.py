"""Settings of the example shop: a Django project whose tasks run on amqptasks."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "amqptasks.contrib.django",  # the database schedule (admin), the App built from AMQPTASKS below
    "shop",
]
if "django_tasks" not in INSTALLED_APPS:
    try:  # before Django 6, Django's tasks framework is the django-tasks backport
        import django.tasks  # noqa: F401
    except ImportError:
        INSTALLED_APPS.append("django_tasks")

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "shopsite.urls"
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
            ]
        },
    }
]

# SHOP_DB lets the worker and beat processes of the tests use the test database (a file, not in memory).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", BASE_DIR / "db.sqlite3"),
        "ATOMIC_REQUESTS": True,  # each view in a transaction: delay_on_commit() publishes after it commits
        "TEST": {"NAME": os.environ.get("SHOP_TEST_DB", BASE_DIR / "test-db.sqlite3")},
        # The web app, the worker and beat share the file: WAL lets readers and a writer work at once.
        "OPTIONS": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# amqptasks: the YAML, and the broker (AMQPTASKS_BROKER_URL, when set, wins over BROKER_URL).
AMQPTASKS = {
    "CONFIG": BASE_DIR / "amqptasks.yaml",
    "BROKER_URL": "amqp://guest:guest@localhost:5672/%2F",
}

# Django's tasks framework (django.tasks) enqueues through amqptasks; `amqptasks worker` runs the tasks.
TASKS = {"default": {"BACKEND": "amqptasks.contrib.django.tasks_backend.AmqptasksBackend"}}

# The tests run against a real RabbitMQ, each run in a fresh vhost (see shop/testrunner.py).
TEST_RUNNER = "shop.testrunner.BrokerTestRunner"
