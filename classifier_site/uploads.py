"""Refusing oversized uploads before their body is read."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def too_large(request: HttpRequest, limit: int) -> bool:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) > limit
    except ValueError:
        return False


def payload_too_large(request: HttpRequest, limit: int) -> HttpResponse:
    message = f"The upload is larger than the limit of {limit / 2**20:,.0f} MB."
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message}, status=413)
    return render(request, "413.html", {"message": message}, status=413)


def limit_upload(setting: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Answer 413 when Content-Length exceeds `settings.<setting>`, without reading the body."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            limit = getattr(settings, setting)
            if request.method == "POST" and too_large(request, limit):
                return payload_too_large(request, limit)
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
