"""A fresh checkout of this repository in a temporary directory, and a clean environment to run it in:
what a new user has, independent of the developer's .env, shell and database."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_environment(**variables: str) -> dict[str, str]:
    """Only what a program needs to run, plus `variables`: no settings from the developer's shell."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **variables}


def clone_checkout(destination: Path) -> Path:
    """`git clone` of this checkout, with the working tree's uncommitted changes copied over, so the
    clone is what the next commit will be. No .env, database, static files or admin password."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(destination)], check=True, timeout=120)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = ROOT / relative
        target = destination / relative
        if source.is_symlink() or not source.exists():
            # Deleted in the working tree; `.venv` is a link to a shared virtualenv, not a file.
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination
