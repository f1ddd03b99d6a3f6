"""OpenAPI postprocessing (drf-spectacular): what every operation answers besides its own."""

from typing import Any

# The shape of every refusal: {"detail": "..."} (classifier_site.errors).
ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
COMMON = {
    "401": ("Not signed in (no session, no token, or a wrong token)", "Authentication credentials were not provided."),
    "403": ("Signed in, but not allowed (admins only)", "You do not have permission to perform this action."),
    "503": ("The database is busy or unavailable: try again (Retry-After)", "The database is unavailable right now."),
}


def add_common_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """401, 403 and 503 on every operation that does not document its own: each route needs
    a signed-in user (403 where it needs an admin or the object's owner), and any may meet a
    database that is down."""
    result.setdefault("components", {}).setdefault("schemas", {}).setdefault("Detail", ERROR)
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for status, (description, example) in COMMON.items():
                responses.setdefault(status, _error(description, example))
    return result


def _error(description: str, example: str) -> dict[str, Any]:
    content = {"schema": {"$ref": "#/components/schemas/Detail"}, "example": {"detail": example}}
    return {"description": description, "content": {"application/json": content}}
