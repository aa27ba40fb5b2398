"""`gridctl route` refuses bad input in one line with exit 2, and prints HAProxy's configuration."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from routesim import GRIDCTL, ServingStore, free_port

needs_haproxy = pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")


@pytest.fixture
def store(tmp_path):
    s = ServingStore(tmp_path)
    yield s
    s.close()


def route(store: ServingStore, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GRIDCTL, "route", *args, "-f", str(store.fleet)], capture_output=True, text=True,
                          env=env, timeout=60)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_route_for_a_job_that_does_not_exist_is_one_line_exit_2(store):
    line = one_error_line(route(store, "nope", "--listen", f"127.0.0.1:{free_port()}"))
    assert line == "error: no job named nope (gridctl jobs lists them)"


def test_route_for_a_batch_job_is_one_line_exit_2(store):
    store.add_job("etl", {"name": "etl", "class": "batch"})
    line = one_error_line(route(store, "etl", "--listen", f"127.0.0.1:{free_port()}"))
    assert line == "error: job etl is a batch job: only service jobs take requests"


def test_readiness_path_that_could_break_the_haproxy_config_is_refused(store):
    store.add_job("odd", {"name": "odd", "class": "service", "readiness": {"http": "/h\n    server evil 10.0.0.1:80"}})
    line = one_error_line(route(store, "odd", "--listen", "127.0.0.1:8080", "--via", "haproxy", "--print-config"))
    assert line.startswith("error: job odd: readiness.http '/h\\n    server evil 10.0.0.1:80' is not a URL path")


@pytest.mark.parametrize("listen", ["8080", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", ":8080"])
def test_malformed_listen_address_is_one_line_exit_2(store, listen):
    line = one_error_line(route(store, "web", "--listen", listen))
    assert line.startswith(f"error: --listen {listen}: expected HOST:PORT")


@pytest.mark.parametrize("via", ["builtin", pytest.param("haproxy", marks=needs_haproxy)])
def test_listen_port_in_use_is_one_line_exit_2(store, via):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(route(store, "web", "--listen", f"127.0.0.1:{port}", "--via", via))
    assert line == f"error: --listen 127.0.0.1:{port}: address already in use"


def test_missing_haproxy_binary_is_one_line_exit_2(store, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    line = one_error_line(route(store, "web", "--listen", f"127.0.0.1:{free_port()}", "--via", "haproxy", env=env))
    assert line == "error: --via haproxy: no haproxy on PATH (apt-get install haproxy), or use --via builtin"


def test_print_config_is_only_for_haproxy(store):
    line = one_error_line(route(store, "web", "--listen", "127.0.0.1:8080", "--print-config"))
    assert line == "error: --print-config: only --via haproxy has a configuration to print"


@needs_haproxy
def test_printed_haproxy_config_checks_http_readiness_path_and_is_valid(store, tmp_path):
    store.add_job("llm", {"name": "llm", "class": "service", "readiness": {"http": "/v1/models"}})
    res = route(store, "llm", "--listen", "127.0.0.1:8080", "--via", "haproxy", "--print-config")
    assert res.returncode == 0, res.stderr
    config = res.stdout
    assert "option httpchk GET /v1/models" in config
    for line in ("balance leastconn", "option redispatch 1", "retry-on conn-failure empty-response response-timeout",
                 "timeout connect 1000ms", "bind 127.0.0.1:8080"):
        assert line in config
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "replicas.map").write_text("")
    (tmp_path / "h.cfg").write_text(config)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True,
                           env={**os.environ, "GRIDCTL_ROUTE_DIR": str(run_dir)})
    assert check.returncode == 0, check.stdout + check.stderr


@needs_haproxy
def test_printed_config_without_http_readiness_uses_tcp_checks(store):
    res = route(store, "web", "--listen", "127.0.0.1:8080", "--via", "haproxy", "--print-config")
    assert res.returncode == 0, res.stderr
    assert "httpchk" not in res.stdout
    assert "check inter 1s fall 2 rise 1 tcp-ut 1000ms disabled" in res.stdout
