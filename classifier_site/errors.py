"""The one vocabulary of refusals.

A service that will not do what was asked raises `Refused` (HTTP 400: the request
is wrong) or `Conflict` (HTTP 409: the request was fine, the state of things says
no) with a message for people. The API's exception handler and the pages'
middleware translate them, so views and viewsets do not each catch their own.
"""

import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseServerError, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback


class Refused(ValueError):
    """The request cannot be done as asked; the message says why (HTTP 400). A
    ValueError, because that is what it is: code that checks values catches it too."""

    status_code = 400


class Conflict(Refused):
    """The request clashes with the current state (running, already done, edited meanwhile): HTTP 409."""

    status_code = 409


# What SQLite and PostgreSQL say when the database is busy or out of reach: nothing about
# the request, so a 503 to try again, not a 500. (A deadlock or a failed constraint is not here.)
_UNAVAILABLE = (
    "database is locked", "database table is locked", "lock timeout", "could not connect",
    "connection failed", "connection refused", "server closed the connection", "terminating connection",
    "connection already closed", "the database system is", "unable to open database file",
)  # fmt: skip
DATABASE_BUSY = "The database is busy with another write (an import, a training run); try again in a few seconds."
DATABASE_DOWN = "The database is unavailable right now; try again shortly."
RETRY_AFTER = "5"  # seconds, for the Retry-After header of a 503


def is_database_unavailable(exc: BaseException) -> bool:
    """The database is locked (SQLite's busy timeout, PostgreSQL's lock_timeout) or cannot
    be reached: worth a 503 and a retry, not a 500."""
    if isinstance(exc, InterfaceError):
        return True
    return isinstance(exc, OperationalError) and any(words in str(exc).lower() for words in _UNAVAILABLE)


def database_unavailable_message(exc: BaseException) -> str:
    """What to tell people about an error `is_database_unavailable` accepts."""
    return DATABASE_BUSY if "locked" in str(exc).lower() or "lock timeout" in str(exc).lower() else DATABASE_DOWN


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus refusals as {"detail": message} with their status, Django's
    own limits on a request body as JSON 413, not its HTML 400 page, and a database
    that is locked or down as JSON 503."""
    if isinstance(exc, Refused):
        return Response({"detail": str(exc)}, status=exc.status_code)
    if is_database_unavailable(exc):
        set_rollback()  # under ATOMIC_REQUESTS, as DRF's own handler does
        return Response({"detail": database_unavailable_message(exc)}, 503, headers={"Retry-After": RETRY_AFTER})
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
        if is_database_unavailable(exc):
            return database_unavailable(request, exc)
        if not isinstance(exc, Refused):
            return None
        return render(request, "refused.html", {"message": str(exc)}, status=exc.status_code)


def database_unavailable(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """503 saying so: JSON on the API, else a page that needs no database (no user, no session)."""
    message = database_unavailable_message(exc)
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=503)
    else:
        response = HttpResponse(render_to_string("503.html", {"message": message}), status=503)
    response["Retry-After"] = RETRY_AFTER
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: whatever no view, middleware or DRF handler caught. A database that is down
    (a session read in a middleware, say) is a 503; anything else a 500, in JSON on the API."""
    exc = sys.exc_info()[1]
    if exc is not None and is_database_unavailable(exc):
        return database_unavailable(request, exc)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Server error: the site's administrators can find it in the log."}, status=500)
    return HttpResponseServerError(render_to_string("500.html"))
