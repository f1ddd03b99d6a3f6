"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")

application = get_wsgi_application()

from classifier_site.folders import ensure_folders  # noqa: E402  settings are configured only now

ensure_folders()
