"""Reading a store on a read-only filesystem (issue 11, item 15): `nodes`, `jobs`, `events` and
`describe node` work on a snapshot or a mounted backup; a writing command says why it cannot.
Needs root (a read-only bind mount)."""

from __future__ import annotations

import subprocess

import pytest

from helpers import gridctl, gridctl_json, write_local_fleet

from fleetsim import requires_root


@pytest.fixture
def readonly_store(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    path = write_local_fleet(tmp_path, "ro", state_dir=state)
    assert gridctl("reconcile", "-f", path).returncode == 0
    if subprocess.run(["mount", "--bind", str(state), str(state)]).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(state)]).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield path
    finally:
        subprocess.run(["umount", str(state)])


@requires_root
def test_read_commands_work_on_a_store_on_a_read_only_filesystem(readonly_store):
    code, nodes = gridctl_json("nodes", "-f", readonly_store)
    assert code == 0 and sorted(n["name"] for n in nodes) == ["sim-0", "sim-1"]
    assert {n["state"] for n in nodes} == {"ready"}
    for command in (("jobs",), ("events",), ("describe", "node", "sim-0")):
        res = gridctl(*command, "-f", readonly_store)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (command, res.stderr)


@requires_root
def test_a_writing_command_on_a_read_only_store_is_one_line(readonly_store):
    res = gridctl("cordon", "sim-0", "-f", readonly_store)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
