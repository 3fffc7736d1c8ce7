"""tests/conftest.py's module_transaction: rows a module's tests share are written once, each test's
writes are still undone after it, and the module's tests that do not take the shared rows run first,
on the empty database they expect."""

from __future__ import annotations

import pytest

from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
SHARED = 3
made: list[int] = []  # how many times the shared rows were written


@pytest.fixture(scope="module")
def shared_rows(module_transaction, django_db_blocker) -> list[LLMRequestLog]:
    with django_db_blocker.unblock():
        made.append(1)
        return make_logs(SHARED, model_name="shared")


def test_a_test_deleting_the_shared_rows(shared_rows):
    assert LLMRequestLog.objects.filter(model_name="shared").count() == SHARED
    LLMRequestLog.objects.all().delete()
    make_logs(1, model_name="own")
    assert list(LLMRequestLog.objects.values_list("model_name", flat=True)) == ["own"]


def test_the_next_test_has_them_back_and_none_of_its_rows(shared_rows):
    assert sorted(LLMRequestLog.objects.values_list("model_name", flat=True)) == ["shared"] * SHARED
    assert {log.pk for log in shared_rows} == set(LLMRequestLog.objects.values_list("pk", flat=True))
    assert made == [1]  # written once for both tests


def test_a_test_without_them_runs_first_on_an_empty_table():
    # Listed last in this file, run before the tests above (conftest._shared_rows_last).
    assert made == []
    assert LLMRequestLog.objects.count() == 0
