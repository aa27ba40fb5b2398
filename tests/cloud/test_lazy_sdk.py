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
    """Run `code` in a fresh interpreter: (modules it loaded, its stdout + stderr)."""
    script = code + "\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    marker = next(line for line in done.stdout.splitlines() if line.startswith("MODULES="))
    return json.loads(marker[len("MODULES="):]), done.stdout + done.stderr


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


def validate_in_subprocess(tmp_path, fleet_text: str, blocked: str | None = None) -> tuple[list[str], str]:
    """Run `gridctl validate` in a fresh interpreter (with `blocked` made unimportable):
    (modules loaded, stdout + stderr)."""
    (tmp_path / "fleet.yaml").write_text(fleet_text)
    block = f"sys.modules[{blocked!r}] = None\n" if blocked else ""
    code = (f"import sys\n{block}from gridctl.cli import main\nsys.argv = ['gridctl', 'validate', '-f', 'fleet.yaml']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('EXIT=' + str(e.code))\n")
    return loaded_after(code, tmp_path)


def test_validating_a_local_and_ssh_fleet_loads_no_cloud_sdk_nor_cloud_adapter(tmp_path):
    modules, out = validate_in_subprocess(tmp_path, "fleet: f\npools:\n  - {name: sim, provider: local}\n"
                                          "  - {name: onprem, provider: ssh, nodes: [{name: a, host: a.example}]}\n")
    assert "ok: 2 pools, 2 nodes" in out and "EXIT=0" in out
    assert sdk_modules(modules) == [] and "providers.aws" not in modules and "providers.gcp" not in modules


AWS_FLEET = ("fleet: f\npools:\n  - name: l4\n    provider: aws\n    region: us-east-1\n    instance_type: g6.xlarge\n"
             "    image: ami-0123456789abcdef0\n")


def test_a_cloud_fleet_is_checked_without_its_sdk_and_the_note_names_the_extra(tmp_path):
    _, out = validate_in_subprocess(tmp_path, AWS_FLEET, blocked="boto3")
    assert "ok: 1 pools, 0 nodes" in out and "EXIT=0" in out
    assert "note: pool l4: provider 'aws' needs boto3: pip install 'gridctl[aws]'" in out


def test_a_bad_cloud_pool_field_is_found_without_its_sdk(tmp_path):
    _, out = validate_in_subprocess(tmp_path, AWS_FLEET + "    min: 3\n    max: 1\n", blocked="boto3")
    assert "fleet.yaml:3 pools[0]: min (3) is larger than max (1)" in out and "EXIT=2" in out
