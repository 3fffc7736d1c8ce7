"""Which query parameters each GET endpoint takes: declared once per view, checked, documented.

A view lists its own parameters (`parameters`) and says whether it takes the shared filters
(`filtered`, from llm.filters.LogFilterSet); its pagination class and filterset class add theirs.
The same list answers `?colour=blue` with a 400 naming `colour` and feeds the OpenAPI document,
so the docs cannot drift from what the endpoint accepts.
"""

from __future__ import annotations

from typing import ClassVar

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.mixins import ListModelMixin
from rest_framework.request import Request
from rest_framework.settings import api_settings

from llm.api.errors import ErrorResponsesSchema
from llm.filters import WINDOW_RULE, HoursFilter, LogFilterSet


def filter_parameters() -> list[OpenApiParameter]:
    """The shared filters as OpenAPI parameters, from the FilterSet's own declarations."""
    parameters = []
    for name, log_filter in LogFilterSet.base_filters.items():
        choices = log_filter.extra.get("choices")
        parameters.append(
            OpenApiParameter(
                name,
                OpenApiTypes.INT if isinstance(log_filter, HoursFilter) else OpenApiTypes.STR,
                description=str(log_filter.extra.get("help_text", "")),
                enum=[value for value, _ in choices] if choices else None,
            )
        )
    return parameters


FILTER_PARAMETERS = filter_parameters()
SEARCH_PARAMETER = OpenApiParameter("search", OpenApiTypes.STR, description="Text in the prompt or the response.")


class DeclaredParametersSchema(ErrorResponsesSchema):
    """Adds a view's declared query parameters to its GET operation, and the window rule to the
    description of every filtered endpoint."""

    def get_override_parameters(self) -> list:
        declared = self.view.declared_parameters() if self.method == "GET" else []
        return [*declared, *super().get_override_parameters()]

    def get_description(self) -> str:
        description = super().get_description()
        if self.method == "GET" and getattr(self.view, "filtered", False):
            return f"{description}\n\n{WINDOW_RULE}".strip()
        return description


class DeclaredParameters:
    """Mixin for API views: a GET with a query parameter the view does not know answers 400."""

    schema = DeclaredParametersSchema()
    # The view's own query parameters (search, group_by, ...).
    parameters: ClassVar[tuple[OpenApiParameter, ...]] = ()
    # True: takes the shared filters and covers the window of llm.filters.WINDOW_RULE.
    filtered: ClassVar[bool] = False

    @classmethod
    def declared_parameters(cls) -> list[OpenApiParameter]:
        return [*(FILTER_PARAMETERS if cls.filtered else []), *cls.parameters]

    def known_parameters(self) -> set[str]:
        names = {parameter.name for parameter in self.declared_parameters()}
        names.add(api_settings.URL_FORMAT_OVERRIDE)  # ?format=json|api, DRF's renderer choice
        filterset_class = getattr(self, "filterset_class", None)
        if filterset_class is not None:
            names.update(filterset_class.base_filters)
        # Every generic view has a paginator (REST_FRAMEWORK's default); only a list uses it.
        paginator = getattr(self, "paginator", None) if isinstance(self, ListModelMixin) else None
        if paginator is not None:
            names.update(
                name for name in (getattr(paginator, "page_query_param", None), paginator.page_size_query_param) if name
            )
        return names

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method not in ("GET", "HEAD"):
            return
        known = self.known_parameters()
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            message = f"Unknown parameter. Known: {', '.join(sorted(known))}."
            raise ValidationError({name: [message] for name in unknown})
