"""One pagination for every API list (REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]): page_size
above the maximum, or not a number, answers 400 naming it, never a silently shorter page."""

from __future__ import annotations

import pytest
from django.conf import settings
from rest_framework.mixins import ListModelMixin

from llm.api.pagination import MAX_PAGE_SIZE, StrictPageNumberPagination
from llm.urls import api_urlpatterns

pytestmark = pytest.mark.django_db


def paginated_paths() -> list[str]:
    paths = []
    for pattern in api_urlpatterns:
        view = getattr(pattern.callback, "cls", None)
        if view is not None and issubclass(view, ListModelMixin) and view.pagination_class is not None:
            paths.append("/" + str(pattern.pattern))
    return paths


def test_the_default_is_the_strict_pagination():
    assert settings.REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"] == "llm.api.pagination.StrictPageNumberPagination"
    assert StrictPageNumberPagination.max_page_size == MAX_PAGE_SIZE == 500


def test_every_list_but_the_rules_is_paginated():
    assert set(paginated_paths()) == {
        "/api/logs/",
        "/api/logs/errors/",
        "/api/feedback/",
        "/api/alerts/logs/",
        "/api/sessions/",
        "/api/users/",
    }


@pytest.mark.parametrize("path", paginated_paths())
@pytest.mark.parametrize("page_size", [str(MAX_PAGE_SIZE + 1), "0", "ten"])
def test_a_page_size_out_of_bounds_is_400(api_client, path, page_size):
    response = api_client.get(path, {"page_size": page_size})
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == ["page_size"]


@pytest.mark.parametrize("path", paginated_paths())
def test_the_largest_page_size_is_taken(api_client, path):
    response = api_client.get(path, {"page_size": str(MAX_PAGE_SIZE)})
    assert response.status_code == 200, response.content
    assert {"count", "next", "previous", "results"} <= set(response.json())


@pytest.mark.parametrize("path", paginated_paths())
def test_a_page_that_is_not_a_number_is_400(api_client, path):
    response = api_client.get(path, {"page": "first"})
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["page"]


def test_the_rules_list_is_not_paginated(api_client):
    response = api_client.get("/api/alerts/rules/", {"page_size": "2"})
    assert response.status_code == 400  # not a parameter it takes
    assert isinstance(api_client.get("/api/alerts/rules/").json(), list)


def test_the_document_states_the_maximum(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    for path in paginated_paths():
        parameters = {parameter["name"]: parameter for parameter in schema["paths"][path]["get"]["parameters"]}
        assert str(MAX_PAGE_SIZE) in parameters["page_size"]["description"], path
