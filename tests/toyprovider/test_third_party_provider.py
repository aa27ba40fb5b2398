"""A provider from another distribution, found through the `gridctl.providers` entry point group,
brings its own pool schema: `gridctl validate` checks a `provider: toy` pool by the toy's rules.

Guards DESIGN section 7's "a third party can add one": each check runs the real CLI in a fresh
interpreter with tests/toyprovider/site on the path, so importlib.metadata finds the toy's
dist-info the way it finds an installed plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"


def validate(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess, Path]:
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{REPO}{os.pathsep}{SITE}", "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-c", "from gridctl.cli import main; main()", "validate", "-f", str(path)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return done, path


def test_fleet_using_a_plugin_provider_validates_with_its_own_fields(tmp_path):
    done, _ = validate(tmp_path, """
        fleet: f
        pools:
          - name: sim
            provider: local
          - name: toys
            provider: toy
            flavour: mint
            machines: 3
    """)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok: 2 pools, 4 nodes", "")


def test_bad_value_of_a_plugin_pool_field_names_file_line_and_field(tmp_path):
    done, path = validate(tmp_path, """
        fleet: f
        pools:
          - name: toys
            provider: toy
            flavour: strawberry
            machines: 0
    """)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {path}:5 pools[0].flavour: expected 'vanilla' or 'mint'; got 'strawberry'",
        f"error: {path}:6 pools[0].machines: must be at least 1; got 0",
    ]


def test_unknown_key_in_a_plugin_pool_gets_did_you_mean_from_the_plugin_schema(tmp_path):
    done, path = validate(tmp_path, """
        fleet: f
        pools:
          - name: toys
            provider: toy
            flavor: mint
    """)
    assert (done.returncode, done.stderr.splitlines()) == (
        2, [f"error: {path}:5 pools[0].flavor: unknown key 'flavor' (did you mean 'flavour'?)"])


def test_unknown_provider_lists_the_plugin_among_the_registered_ones(tmp_path):
    done, path = validate(tmp_path, """
        fleet: f
        pools:
          - name: toys
            provider: toys
    """)
    assert (done.returncode, done.stderr.splitlines()) == (
        2, [f"error: {path}:4 pools[0].provider: unknown provider 'toys' (known: ssh, local, aws, gcp, toy)"])
