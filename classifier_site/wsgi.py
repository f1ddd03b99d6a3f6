"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")

from classifier_site.folders import ensure_folders  # noqa: E402  needs only DJANGO_SETTINGS_MODULE

ensure_folders()  # before the application: WhiteNoise looks at STATIC_ROOT as it is built
application = get_wsgi_application()
