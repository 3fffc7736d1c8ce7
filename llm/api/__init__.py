"""DRF views of the JSON API, one module per area: prompt, metrics, logs, feedback, export,
alerts, ingest, traces, docs (schema and Swagger UI), prometheus. Each view validates, calls one
function, and answers. View modules never import each other; what they share sits in base.py
(the windowed list), pagination.py, params.py (declared query parameters) and errors.py (the
JSON error shape), or below the API (llm/serializers.py, llm/filters.py, llm/metrics.py)."""
