"""The one vocabulary of refusals.

A service that will not do what was asked raises `Refused` (HTTP 400: the request
is wrong) or `Conflict` (HTTP 409: the request was fine, the state of things says
no) with a message for people. The API's exception handler and the pages'
middleware translate them, so views and viewsets do not each catch their own.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.response import Response
from rest_framework.views import exception_handler


class Refused(ValueError):
    """The request cannot be done as asked; the message says why (HTTP 400). A
    ValueError, because that is what it is: code that checks values catches it too."""

    status_code = 400


class Conflict(Refused):
    """The request clashes with the current state (running, already done, edited meanwhile): HTTP 409."""

    status_code = 409


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus refusals as {"detail": message} with their status, and
    Django's own limits on a request body as JSON 413, not its HTML 400 page."""
    if isinstance(exc, Refused):
        return Response({"detail": str(exc)}, status=exc.status_code)
    if isinstance(exc, TooManyFilesSent):
        return Response(
            {"detail": f"Too many files: at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} per request."}, 413
        )
    if isinstance(exc, TooManyFieldsSent):
        return Response(
            {"detail": f"Too many fields: at most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} per request."}, 413
        )
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "The request body is too large."}, 413)
    return exception_handler(exc, context)


class RefusalMiddleware:
    """A refusal no page caught becomes a page saying why, with its status."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if not isinstance(exc, Refused):
            return None
        return render(request, "refused.html", {"message": str(exc)}, status=exc.status_code)
