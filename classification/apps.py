from django.apps import AppConfig


class ClassificationConfig(AppConfig):
    name = "classification"
    default_auto_field = "django.db.models.BigAutoField"
