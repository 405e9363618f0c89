"""Settings of the example: no database, no admin, no sessions; one app."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Development defaults: set DJANGO_SECRET_KEY and DJANGO_DEBUG=false in any
# real deployment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "true").lower() == "true"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = ["events"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

# Nothing here needs a database: the seed's state (pending replies) lives in
# the gateway now.
DATABASES = {}

USE_TZ = True

# The gateway. Read per request, so tests can override them.
GATEWAY_ADDR = os.environ.get("GATEWAY_ADDR", "127.0.0.1:50051")
GATEWAY_ROUTE = os.environ.get("GATEWAY_ROUTE", "echo")
GATEWAY_TIMEOUT = float(os.environ.get("GATEWAY_TIMEOUT", "5"))  # seconds, end to end

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"events": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")}},
}
