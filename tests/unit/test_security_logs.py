"""Every log line passes the masking: structlog's and the standard library's, tracebacks
included; uvicorn's own lines too; one traceback per failed request; hex ids left alone."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap

import httpx
import structlog

from ecs.logs import configure_logging, mask_text
from ecs.testing import free_port, wait_for_port

PHONE = "13912345678"
ID_NUMBER = "11010519491231002X"


def test_numbers_are_masked_and_hex_ids_are_not():
    assert mask_text(f"caller {PHONE} called") == "caller 139******78 called"
    assert mask_text(f"id {ID_NUMBER}") == "id 110*************2X"
    assert mask_text("电话13912345678") == "电话139******78"
    for hex_id in ("a3f15800001111b", "6e00cdd11ba74adf9101e9bd901dfc73", "550e8400-e29b-41d4-a716-013912345678"):
        assert mask_text(hex_id) == hex_id


def test_a_traceback_and_a_standard_library_record_are_masked(capsys):
    configure_logging("t", "INFO", True)
    log = structlog.get_logger("t")
    try:
        raise ValueError(f"caller {PHONE} refused")
    except ValueError:
        log.exception("failed", msg_id="a3f15800001111b")
    try:
        raise RuntimeError(f"[parameters: ('{PHONE}',)]")
    except RuntimeError:
        logging.getLogger("sqlalchemy.pool").error("pool failed for %s", PHONE, exc_info=True)
    out = capsys.readouterr().out
    assert PHONE not in out, out
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines[0]["msg_id"] == "a3f15800001111b" and "Traceback" in lines[0]["exception"]
    assert lines[1]["logger"] == "sqlalchemy.pool" and "139******78" in lines[1]["event"]
    assert "Traceback" in lines[1]["exception"]


SERVER = textwrap.dedent(
    """
    import contextlib, sys
    from fastapi import APIRouter
    from ecs.service import serve
    from ecs.settings import ServiceSettings
    from ecs.logs import configure_logging
    from ecs.web import create_app

    router = APIRouter()

    @router.get("/crash")
    async def crash():
        raise RuntimeError("database said: caller 13912345678 is a duplicate")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield

    configure_logging("crashy", "INFO", True)
    app = create_app(title="t", version="1", lifespan=lifespan, routers=[router])
    serve(lambda s: app, ServiceSettings(http_port=int(sys.argv[1]), dev_secrets=True))
    """
)


def test_uvicorn_and_a_failed_request_write_masked_lines_and_one_traceback(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        r = httpx.get(f"http://127.0.0.1:{port}/crash")
        assert r.status_code == 500 and PHONE not in r.text
        # A request uvicorn itself refuses, with a number in a malformed header.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nX-Caller {PHONE}\r\n\r\n".encode())
            s.recv(1024)
        httpx.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = log_path.read_text()
    assert PHONE not in out, out
    assert out.count("Traceback (most recent call last)") == 1, out
    assert "139******78" in out
    for line in out.splitlines():
        if line.strip():
            json.loads(line)  # every line in the one format
