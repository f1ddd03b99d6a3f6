"""Start-up checks of the serving settings: a typo fails `check` and start-up, not every request."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def throttle_rates(app_configs: Any, **kwargs: Any) -> list[Error]:
    from classifier_site.throttling import parse_rate

    errors = []
    for name in ("PREDICT_THROTTLE_RATE", "PREDICT_ANON_THROTTLE_RATE", "IMPORT_THROTTLE_RATE"):
        try:
            parse_rate(getattr(settings, name))
        except ValueError:
            errors.append(
                Error(
                    f"{name}={getattr(settings, name)!r} is not a rate.",
                    hint='Write requests per period, e.g. "1200/min", "20/s", "5000/hour", or "none".',
                    id="classification.E001",
                )
            )
    return errors
