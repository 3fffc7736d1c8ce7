"""JSON in and out of every DRF endpoint: the parser (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"])
and the renderer (REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"]).

DRF's own parser lets a deeply nested body (3,000 levels) raise RecursionError, a 500. This one
reads JSON through `llm.ingest_limits.parse_json`, as the events API and the OTLP receiver do:
strict (no NaN or Infinity), at most MAX_JSON_DEPTH levels, and anything else is a 400.

DRF's renderer fails with a 500 on text UTF-8 cannot carry (a lone surrogate a provider put in
its answer); this one writes such an answer with \\u escapes, which JSON allows.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import parsers, renderers
from rest_framework.exceptions import ParseError

from llm.ingest_limits import JSONError, parse_json


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return parse_json(stream.read().decode(encoding))
        except (JSONError, UnicodeDecodeError) as error:
            raise ParseError(f"JSON parse error - {error}") from error


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            self.ensure_ascii = True  # one renderer per response: only this answer is escaped
            return super().render(data, accepted_media_type, renderer_context)
