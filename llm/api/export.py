"""GET /api/export/csv/ and /api/export/json/: every filtered log, streamed.

Rows come from the database in chunks (a server-side cursor on PostgreSQL) and leave as they are
written, so memory stays flat whatever the row count.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import CharField, FloatField, Func, TextField
from django.db.models.functions import Cast
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from llm.api.params import SEARCH_PARAMETER, DeclaredParameters
from llm.filters import date_range_label, filter_logs, search_logs
from llm.models import LLMRequestLog, LLMRequestLogQuerySet
from llm.paging import search_to_stream
from llm.serializers import LOG_FIELDS, LogSerializer

CHUNK_ROWS = 2_000
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class CSVRenderer(BaseRenderer):
    """Lets `Accept: text/csv` through content negotiation; error bodies are still JSON."""

    media_type = "text/csv"
    format = "csv"

    def render(self, data: Any, accepted_media_type=None, renderer_context=None) -> bytes:
        return json.dumps(data, cls=DjangoJSONEncoder).encode()


class _Line:
    """csv.writer writes into this and hands the line back instead of buffering it."""

    def write(self, line: str) -> str:
        return line


def csv_lines(rows: Iterable[tuple]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(LOG_FIELDS)
    batch = []
    for row in rows:
        batch.append(writer.writerow(csv_row(row)))
        if len(batch) >= 500:
            yield "".join(batch)
            batch.clear()
    yield "".join(batch)


TAGS = LOG_FIELDS.index("tags")
# Only text columns can hold a formula; numbers, UUIDs and times are written as they are.
TEXT_FIELDS = {field.name for field in LLMRequestLog._meta.get_fields() if isinstance(field, CharField | TextField)}
TEXT_COLUMNS = [index for index, name in enumerate(LOG_FIELDS) if name in TEXT_FIELDS]


class ISOTimestamp(Func):
    """A timestamp as ISO 8601 text in UTC, written by the database: parsing it into a datetime
    only to print it again took a fifth of a PostgreSQL export."""

    output_field = TextField()

    def as_postgresql(self, compiler, connection, **extra_context):
        template = "to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00'"
        return self.as_sql(compiler, connection, template=template, **extra_context)

    def as_sqlite(self, compiler, connection, **extra_context):
        # Django stores "YYYY-MM-DD HH:MM:SS[.ffffff]" in UTC: the same text as datetime.isoformat().
        template = "replace(%(expressions)s, ' ', 'T') || '+00:00'"
        return self.as_sql(compiler, connection, template=template, **extra_context)


class FixedPointCost(Func):
    """A cost as fixed-point text with the column's 10 decimals ("0.0000000000", never "0E-10"),
    written by the database, like the timestamps."""

    output_field = TextField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="(%(expressions)s)::text", **extra_context)

    def as_sqlite(self, compiler, connection, **extra_context):
        # The %% pairs survive two rounds of %-formatting: the template's and the SQLite backend's.
        template = "printf('%%%%.10f', %(expressions)s)"
        return self.as_sql(compiler, connection, template=template, **extra_context)


def csv_row(row: tuple) -> list:
    cells = list(row)
    cells[TAGS] = "" if cells[TAGS] == "{}" else cells[TAGS]
    for index in TEXT_COLUMNS:
        text = cells[index]
        if text and text.startswith(FORMULA_STARTS):
            cells[index] = "'" + text
    return cells


def json_chunks(rows: Iterable[tuple]) -> Iterator[str]:
    encoder = DjangoJSONEncoder(ensure_ascii=False)
    yield "["
    separator = "\n"
    batch = []
    for row in rows:
        batch.append(separator + encoder.encode(dict(zip(LOG_FIELDS, row, strict=True))))
        separator = ",\n"
        if len(batch) >= 500:
            yield "".join(batch)
            batch.clear()
    yield "".join(batch) + "\n]\n"


class ExportView(DeclaredParameters, APIView):
    # Every row with its prompt and response: the text right, and for a user the export permission.
    required_right = "export"
    filtered = True
    parameters = (SEARCH_PARAMETER,)
    extension = ""
    content_type = ""

    def body(self, rows: Iterable[tuple]) -> Iterator[str]:
        raise NotImplementedError

    def columns(self, logs: LLMRequestLogQuerySet) -> LLMRequestLogQuerySet:
        return logs.values_list(*LOG_FIELDS)

    def handle_exception(self, exc: Exception):
        # An error is JSON whatever the file type asked for (?format=csv, Accept: text/csv).
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().handle_exception(exc)

    def get(self, request: Request) -> StreamingHttpResponse:
        filtered = filter_logs(request.query_params)
        logs = search_to_stream(
            search_logs(filtered.queryset, request.query_params),
            lambda: search_logs(filtered.queryset, request.query_params, walk=True),
        )
        rows = self.columns(logs.order_by("timestamp", "id")).iterator(chunk_size=CHUNK_ROWS)
        filename = f"llm-logs_{date_range_label(filtered)}.{self.extension}"
        return StreamingHttpResponse(
            self.body(rows),
            content_type=self.content_type,
            headers={"Content-Disposition": f'attachment; filename="{filename}"', **filtered.window_headers()},
        )


@extend_schema_view(
    get=extend_schema(responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="CSV file")})
)
class CSVExport(ExportView):
    """Every filtered log as CSV (UTF-8, oldest first); formula-like cells are prefixed with '."""

    renderer_classes = [JSONRenderer, CSVRenderer]
    extension = "csv"
    content_type = "text/csv; charset=utf-8"

    def body(self, rows):
        return csv_lines(rows)

    def columns(self, logs):
        # Tags and time as the database's text: decoding and encoding them again costs a third of the time.
        as_text = {"tags": "tags_text", "timestamp": "timestamp_text", "cost_estimate": "cost_text"}
        return logs.annotate(
            tags_text=Cast("tags", TextField()),
            timestamp_text=ISOTimestamp("timestamp"),
            cost_text=FixedPointCost("cost_estimate"),
        ).values_list(*[as_text.get(name, name) for name in LOG_FIELDS])


@extend_schema_view(
    get=extend_schema(
        responses={(200, "application/json"): OpenApiResponse(LogSerializer(many=True), description="JSON array")}
    )
)
class JSONExport(ExportView):
    """Every filtered log as one JSON array (UTF-8, oldest first)."""

    renderer_classes = [JSONRenderer]
    extension = "json"
    content_type = "application/json; charset=utf-8"

    def body(self, rows):
        return json_chunks(rows)

    def columns(self, logs):
        # A JSON number, like cost_estimate in every other answer (DjangoJSONEncoder writes a Decimal as a string).
        as_number = {"cost_estimate": "cost_number"}
        return logs.annotate(cost_number=Cast("cost_estimate", FloatField())).values_list(
            *[as_number.get(name, name) for name in LOG_FIELDS]
        )
