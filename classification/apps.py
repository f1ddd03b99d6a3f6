from django.apps import AppConfig


class ClassificationConfig(AppConfig):
    name = "classification"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from classification import checks  # noqa: F401  registers the settings checks
