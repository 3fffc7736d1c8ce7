"""DRF views of the JSON API, one module per area: prompt, metrics, logs, feedback, export,
alerts, ingest. Each view validates, calls one function, and answers."""
