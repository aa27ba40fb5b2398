"""Shared fixtures: the real-sshd simulated fleet (session-scoped) and an isolated home."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleetsim import SshFleet  # noqa: E402


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory):
    """One OpenSSH sshd on a free loopback port serving every simulated node address."""
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH sshd is not installed (scripts/test installs it)")
    fleet = SshFleet(tmp_path_factory.mktemp("sshfleet"))
    fleet.start()
    yield fleet
    fleet.stop()


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """XDG_STATE_HOME and HOME under tmp_path, so no test touches the real home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("GRIDCTL_FLEET", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return dict(os.environ)


from fleetsim import requires_root  # noqa: E402,F401  (re-exported for older imports)
