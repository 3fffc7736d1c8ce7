"""The JSON parser of every DRF endpoint (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]).

DRF's own parser lets a deeply nested body (3,000 levels) raise RecursionError, a 500. This one
reads JSON through `llm.ingest_limits.parse_json`, as the events API and the OTLP receiver do:
strict (no NaN or Infinity), at most MAX_JSON_DEPTH levels, and anything else is a 400.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from llm.ingest_limits import JSONError, parse_json


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return parse_json(stream.read().decode(encoding))
        except (JSONError, UnicodeDecodeError) as error:
            raise ParseError(f"JSON parse error - {error}") from error
