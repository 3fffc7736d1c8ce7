"""One JSON shape for API errors: {"error": "...", "fields": {"name": ["..."]}}, and the schema
class that documents, on every operation, each error status the server can answer.

`ErrorResponsesSchema` (REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]) adds to each operation of the
OpenAPI document what it can answer besides its own responses, with the error shape
(llm.serializers.ErrorSerializer):

- 400: a GET with a bad or unknown query parameter (llm/api/params.py), a body that is invalid;
- 401: no API key or session, or a bad key (with `WWW-Authenticate: Bearer`);
- 403: a caller without the right the view declares (llm/permissions.py), or a POST, PUT, PATCH or
  DELETE from a logged-in session without the CSRF token;
- 404: a path naming nothing, a page past the last one;
- 415: a body that is not JSON (or a form where forms are read);
- 503: the database unavailable, with Retry-After: one response, `#/components/responses/DatabaseUnavailable`.

405 (a method the path does not take) and 406 (an Accept header no renderer matches) can answer on
every path and are described once, in the document's description (SPECTACULAR_SETTINGS). A view
adds what only it answers (413, 429, 502, 504...) with extend_schema; an error it declares with a
description only gets the error shape as its body.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler

from llm.middleware import UNAVAILABLE_MESSAGE
from llm.outage import RETRY_AFTER_SECONDS
from llm.permissions import RIGHTS, right_for
from llm.serializers import ErrorSerializer


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = response.data
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        response.data = {"error": "Invalid input.", "fields": fields}
    elif isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"error": str(response.data["detail"])}
    return response


JSON = "application/json"
ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `fields` names each bad field or query parameter and says why.",
    "401": "No credentials, or an API key that is unknown or revoked (`WWW-Authenticate: Bearer`).",
    "403": "The caller lacks the right this operation needs (`missing` names the API key's scope, or the "
    "user's permission with the `role` that has it), or a logged-in session sent no valid CSRF token on a "
    "POST, PUT, PATCH or DELETE (an API key needs none).",
    "404": "Nothing at this path (no such object), a page past the last one, or an unknown `format`.",
    "415": "A body in a media type this endpoint does not read (see the request body's types).",
}
UNAVAILABLE = "DatabaseUnavailable"
UNAVAILABLE_DESCRIPTION = (
    f"The database is unavailable (stopped, restarting, unreachable): try again after Retry-After seconds. "
    f'Body: {{"error": "{UNAVAILABLE_MESSAGE}"}}.'
)
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 0},
        "description": f"Seconds to wait before trying again ({RETRY_AFTER_SECONDS}).",
    }
}


class ErrorResponsesSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the error answers of every operation (see the module docstring)."""

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        responses = operation["responses"]
        for code, response in responses.items():
            if code >= "400" and "content" not in response:  # declared with a description only
                response.update(self._error_response(code, response.get("description", ""), response))
        for code in self.error_statuses(operation):
            responses.setdefault(code, self._error_response(code, ERROR_DESCRIPTIONS[code]))
        responses.setdefault("503", self._unavailable_response())
        operation["responses"] = dict(sorted(responses.items()))
        self._describe_right(operation)
        return operation

    def _describe_right(self, operation: dict) -> None:
        """Which right the operation needs: in its description, and as `x-required-right`."""
        right_name = right_for(self.view, self.method)
        if not isinstance(right_name, str):
            return
        right = RIGHTS[right_name]
        who = f"the {right.role} role" if right.permissions else "any logged-in user"
        scopes = " or ".join(f"`{scope}`" for scope in (right.scope, *right.also_by))
        needs = f"Needs the right `{right_name}`: an API key with the scope {scopes}, or {who}."
        operation["description"] = f"{operation.get('description', '')}\n\n{needs}".strip()
        operation["x-required-right"] = right_name

    def error_statuses(self, operation: dict) -> list[str]:
        parameters = operation.get("parameters", [])
        has_body = "requestBody" in operation
        # Every GET checks its query string (llm/api/params.py): an unknown parameter is a 400.
        statuses = ["400"] if has_body or self.method == "GET" else []
        # 403: a missing right (llm/permissions.py) on any method; the CSRF check on unsafe ones.
        statuses += ["401", "403"]
        paginated = self.method == "GET" and self._is_list_view() and self._get_paginator() is not None
        # DRF answers 404 to an unknown ?format= (documented where renderers offer a choice).
        names = {(parameter["in"], parameter["name"]) for parameter in parameters}
        if paginated or ("query", "format") in names or any(where == "path" for where, _ in names):
            statuses.append("404")
        if has_body:
            statuses.append("415")
        return statuses

    def _error_response(self, code: str, description: str, declared: dict | None = None) -> dict:
        response = self._get_response_for_code(OpenApiResponse(ErrorSerializer, description), code, [JSON])
        if code == "401":
            response["headers"] = {
                "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer: send an API key."}
            }
        if declared and "headers" in declared:
            response["headers"] = {**response.get("headers", {}), **declared["headers"]}
        return response

    def _unavailable_response(self) -> dict:
        body = self._get_response_for_code(ErrorSerializer, "503", [JSON])
        component = ResolvedComponent(
            name=UNAVAILABLE,
            type=ResolvedComponent.RESPONSE,
            object=UNAVAILABLE,
            schema={"description": UNAVAILABLE_DESCRIPTION, "headers": RETRY_AFTER_HEADER, "content": body["content"]},
        )
        self.registry.register_on_missing(component)
        return component.ref
