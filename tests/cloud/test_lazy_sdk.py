"""Cloud SDKs load only when a cloud pool is used (STYLE 10), and a missing SDK names its extra.
Each check runs in a fresh interpreter so nothing imported by other tests hides an eager import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cloud_support import REPO

SDK_PREFIXES = ("boto3", "botocore", "moto", "google.cloud.compute", "google.api_core", "google.auth",
                "google.protobuf", "grpc", "proto")


def loaded_after(code: str, tmp_path) -> tuple[list[str], str]:
    script = code + "\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    marker = next(line for line in done.stdout.splitlines() if line.startswith("MODULES="))
    return json.loads(marker[len("MODULES="):]), done.stdout


def sdk_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(SDK_PREFIXES) or m == "google"]


def test_importing_gridctl_cli_and_providers_loads_no_cloud_sdk(tmp_path):
    modules, _ = loaded_after("import gridctl.cli, providers, providers.base", tmp_path)
    assert "providers" in modules and sdk_modules(modules) == []


def test_gridctl_help_loads_no_cloud_sdk(tmp_path):
    code = ("import sys\nfrom gridctl.cli import main\nsys.argv = ['gridctl', '--help']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n")
    modules, out = loaded_after(code, tmp_path)
    assert "Usage" in out and sdk_modules(modules) == []


def test_looking_up_the_cloud_adapters_loads_no_sdk(tmp_path):
    modules, _ = loaded_after("import providers\nproviders.get('aws'); providers.get('gcp')", tmp_path)
    assert "providers.aws" in modules and "providers.gcp" in modules
    assert [m for m in sdk_modules(modules) if m not in ("google", "google.cloud")] == []


@pytest.mark.parametrize("name,blocked", [("aws", "boto3"), ("gcp", "google.cloud.compute_v1")])
def test_missing_sdk_names_the_extra_to_install(tmp_path, name, blocked):
    code = (f"import sys\nsys.modules[{blocked!r}] = None\nimport providers\n"
            f"try:\n    providers.get({name!r})\n"
            "except providers.ProviderUnavailable as e:\n    print('ERROR=' + str(e))\n")
    _, out = loaded_after(code, tmp_path)
    assert f"pip install 'gridctl[{name}]'" in out


def test_cloud_tests_cannot_leave_loopback():
    """The guard in conftest refuses a connection to anything but 127.0.0.0/8 (checked without
    connecting: the audit event is raised by hand)."""
    import socket
    with socket.socket() as sock:
        for address in (("169.254.169.254", 80), ("172.31.0.5", 22), ("192.0.2.1", 443)):
            with pytest.raises(ConnectionRefusedError, match="127.0.0.0/8"):
                sys.audit("socket.connect", sock, address)
        sys.audit("socket.connect", sock, ("127.21.1.4", 22))
