"""OpenAPI postprocessing (drf-spectacular): what every operation answers besides its own."""

from typing import Any

# The shape of every refusal: {"detail": "..."} (classifier_site.errors).
ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
COMMON = {
    "400": ("The request is not valid: the message says which field or parameter, and why", "This field is required."),
    "401": ("Not signed in (no session, no token, or a wrong token)", "Authentication credentials were not provided."),
    "403": ("Signed in, but not allowed (admins only)", "You do not have permission to perform this action."),
    "503": ("The database is busy or unavailable: try again (Retry-After)", "The database is unavailable right now."),
}
# Only some operations: a path with an id, or a list with pages (an unknown id, a page past the end).
NOT_FOUND = ("No such object, or a page past the end", "Not found.")
# Operations that take a body: refused from its headers (classifier_site.uploads.BodyGate).
WITH_BODY = {
    "411": ("A chunked body (send a Content-Length)", "Send the request with a Content-Length header."),
    "413": ("The body is larger than this route's limit", "The upload is larger than the limit of 20 MB."),
}


def add_common_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """What every operation may answer besides its own, where it does not document it: 400
    (a bad field or parameter), 401 and 403 (each route needs a signed-in user, many an
    admin), 503 (a database that is down); 404 where there is an id or a page; 411 and 413
    where there is a body."""
    result.setdefault("components", {}).setdefault("schemas", {}).setdefault("Detail", ERROR)
    for route, path in result.get("paths", {}).items():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            extra = {**COMMON, **(WITH_BODY if "requestBody" in operation else {})}
            if "{" in route or _paginated(operation):
                extra["404"] = NOT_FOUND
            for status, (description, example) in extra.items():
                responses.setdefault(status, _error(description, example))
    return result


def _paginated(operation: dict[str, Any]) -> bool:
    return any(parameter.get("name") == "page" for parameter in operation.get("parameters", []))


def _error(description: str, example: str) -> dict[str, Any]:
    content = {"schema": {"$ref": "#/components/schemas/Detail"}, "example": {"detail": example}}
    return {"description": description, "content": {"application/json": content}}
