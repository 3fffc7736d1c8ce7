"""Random (version 4) UUIDs for the proxy's hot path, from random bytes read in bulk.

`uuid.uuid4()` reads 16 bytes with one getrandom() call, which lets go of the GIL: on the ASGI
worker's event loop (core/asgi.py) each call is a moment for the row writer's thread to take the
GIL and keep it for up to the switch interval (5 ms), and a prompt made three of them. Here one
call reads the bytes of UUIDS_PER_READ UUIDs; each UUID is as random as uuid4()'s (the same
source, os.urandom, the same version and variant bits).
"""

from __future__ import annotations

import os
import threading
import uuid

UUIDS_PER_READ = 256

_lock = threading.Lock()
_state: dict[str, bytes | int] = {"buffer": b"", "offset": 0}


def uuid4() -> uuid.UUID:
    """A random UUID, like uuid.uuid4()."""
    with _lock:
        buffer, offset = _state["buffer"], _state["offset"]
        if offset >= len(buffer):
            buffer, offset = os.urandom(16 * UUIDS_PER_READ), 0
            _state["buffer"] = buffer
        _state["offset"] = offset + 16
    return uuid.UUID(bytes=buffer[offset : offset + 16], version=4)


def _forget_after_fork() -> None:
    # A forked worker (gunicorn) must not hand out the bytes its parent, or a sibling, also holds.
    _state["buffer"], _state["offset"] = b"", 0


os.register_at_fork(after_in_child=_forget_after_fork)
