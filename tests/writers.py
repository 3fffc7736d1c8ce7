"""Writer processes for tests of concurrent writes on PostgreSQL: each runs a script against the
test database (the suite's own, by DATABASE_URL) with one seed of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def run_writers(tmp_path: Path, script_text: str, seeds: range) -> None:
    """Run `script_text` in one process per seed, all at once, and wait until each ends well."""
    database = connection.settings_dict
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    script = tmp_path / "writer.py"
    script.write_text(script_text)
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, str(script), str(seed)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for seed in seeds
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=240)
        assert writer.returncode == 0, stderr.decode()[-2000:]
