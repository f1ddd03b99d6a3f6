"""Refusing request bodies before they are read: by size (the route's own limit, or
MAX_BODY_BYTES for routes that take no uploads) and by authentication (an anonymous
client may send at most ANONYMOUS_MAX_BODY_BYTES). Django's CSRF check parses a POST's
body before any view runs, so a view decorator alone came too late: `BodyGate`, a
middleware, decides from the headers, before any view, middleware or parser reads it."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve


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
    """Answer 413 when Content-Length exceeds `settings.<setting>`, without reading the body;
    `BodyGate` reads the same limit off the view (`upload_limit_setting`) before any other
    middleware runs. An API view class says it with the attribute itself."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            limit = getattr(settings, setting)
            if request.method == "POST" and too_large(request, limit):
                return payload_too_large(request, limit)
            return view(request, *args, **kwargs)

        wrapper.upload_limit_setting = setting  # type: ignore[attr-defined]
        return wrapper

    return decorate


def anonymous_uploads(setting: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a page whose uploads anonymous clients may send while `settings.<setting>` is on."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        view.anonymous_upload_setting = setting  # type: ignore[attr-defined]
        return view

    return decorate


def _view_setting(path: str, name: str) -> str | None:
    """The setting a route's view names in attribute `name`: on the function, on one API
    action (`@action(..., upload_limit_setting=...)`, which DRF passes as the route's
    initkwargs), or on the API class."""
    try:
        view = resolve(path).func
    except Resolver404:
        return None
    own = getattr(view, name, None) or (getattr(view, "initkwargs", None) or {}).get(name)
    return own or getattr(getattr(view, "cls", None), name, None)


def route_body_limit(path: str) -> int:
    """The most bytes a request body to `path` may have: its view's upload limit, else MAX_BODY_BYTES."""
    setting = _view_setting(path, "upload_limit_setting")
    return int(getattr(settings, setting)) if setting else settings.MAX_BODY_BYTES


def route_takes_anonymous_uploads(path: str) -> bool:
    """The route's view names a setting (`anonymous_upload_setting`) that is on."""
    setting = _view_setting(path, "anonymous_upload_setting")
    return bool(setting and getattr(settings, setting))


class BodyGate:
    """Refuses a request body by its headers alone: 411 for a chunked body (no length to
    judge), 413 past the route's limit, 401/403 for an anonymous client sending more than
    ANONYMOUS_MAX_BODY_BYTES (only signed-in users upload). Sits after the session and
    authentication middleware (it reads who is asking, never the body)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.refusal(request) or self.get_response(request)

    def refusal(self, request: HttpRequest) -> HttpResponse | None:
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            return _refuse(request, 411, "Send the request with a Content-Length header (chunked bodies are refused).")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse(request, 400, "The Content-Length header is not a number.")
        if length <= settings.ANONYMOUS_MAX_BODY_BYTES:
            return None  # a small body: nothing to decide before the view does
        limit = route_body_limit(request.path_info)
        if length > limit:
            return payload_too_large(request, limit)
        if not _may_upload(request):
            return _refuse(request, 401 if _is_api(request) else 403, "Sign in to upload.")
        return None


def _may_upload(request: HttpRequest) -> bool:
    """Signed in by session, presenting a token (the API view checks it before it parses the
    body), or on a route open to anonymous uploads (predictions, when the site allows them)."""
    if request.META.get("HTTP_AUTHORIZATION") or request.user.is_authenticated:
        return True
    return route_takes_anonymous_uploads(request.path_info)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _refuse(request: HttpRequest, status: int, message: str) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": message}, status=status)
    return render(request, "refused.html", {"message": message}, status=status)
