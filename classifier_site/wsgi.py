"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

from classifier_site.folders import ensure_folders

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")
ensure_folders()  # before the application: WhiteNoise looks at STATIC_ROOT as it is built
application = get_wsgi_application()
