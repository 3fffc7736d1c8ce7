"""The request ids the request log makes up (no valid X-Request-ID came in): llm.request_ids'."""

from __future__ import annotations

import uuid


def test_made_request_ids_are_random_version_4_uuids(client, db):
    made = [client.get("/health/")["X-Request-ID"] for _ in range(40)]
    assert len(set(made)) == 40
    assert all(uuid.UUID(made_id).hex == made_id and uuid.UUID(made_id).version == 4 for made_id in made)
