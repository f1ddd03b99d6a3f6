"""Where a form goes back to: its `next` when that is a page of this site, never elsewhere."""

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def local_url_or(request: HttpRequest, target: str, fallback: str) -> str:
    """`target` if it is a URL of this site (an open redirect otherwise), else `fallback`."""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback
