"""Specs built to hurt (issue 11, items 10-12): an alias bomb ("billion laughs"), a file too big,
YAML nested hundreds deep, and durations that are infinite or absurd. Each is refused with one
line naming the file (and field), quickly, before anything is recorded; nothing crashes later.
"""

from __future__ import annotations

import math

import pytest

from gridctl.errors import ConfigError
from gridctl.jobspec import load_job
from gridctl.spec import load_fleet, parse_duration

LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] +
                   [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(7)]) + "\n"


@pytest.mark.parametrize("loader", [load_fleet, load_job])
def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path, loader):
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 600
    with pytest.raises(ConfigError) as e:
        loader(path)
    assert str(path) in str(e.value) and "alias" in str(e.value)


@pytest.mark.parametrize("loader", [load_fleet, load_job])
def test_yaml_nested_hundreds_deep_is_one_error_not_a_recursion_crash(tmp_path, loader):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ConfigError) as e:
        loader(path)
    assert str(path) in str(e.value) and "nested" in str(e.value)


def test_a_spec_file_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("fleet: f\n# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as e:
        load_fleet(path)
    assert "larger than" in str(e.value)


@pytest.mark.parametrize("value", [math.inf, ".inf", float("nan"), "1e400", 10**30, 10**400, "9" * 400 + "d", "99999999999d",
                                   "400d"])
def test_an_infinite_or_absurd_duration_is_refused(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value, seconds", [("15s", 15.0), ("2m", 120.0), ("365d", 365 * 86400.0), (0.5, 0.5)])
def test_ordinary_durations_still_parse(value, seconds):
    assert parse_duration(value) == seconds


def test_an_infinite_interval_in_a_fleet_is_a_file_line_field_error(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: f\nhealth:\n  interval: .inf\npools:\n  - {name: p, provider: local, count: 1, "
                    "gpu: {type: H100, count: 1}}\n")
    with pytest.raises(ConfigError) as e:
        load_fleet(path)
    assert f"{path}:3 health.interval" in str(e.value)


def test_an_infinite_backoff_in_a_job_is_a_file_line_field_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ncommand: [true]\nrecovery:\n  backoff: .inf\n")
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert f"{path}:4 recovery.backoff" in str(e.value)


@pytest.mark.parametrize("where", ["fleet", "node"])
@pytest.mark.parametrize("field, value, words", [("user", "root\\nfake: line", "invalid user name"),
                                                 ("proxy_jump", "bastion.example\\n-oProxyCommand=x", "invalid proxy_jump")])
def test_ssh_user_and_jump_with_a_newline_are_refused_at_fleet_and_node_level(tmp_path, where, field, value, words):
    node = f'{{name: a, host: a.example{", " + field + ": " + chr(34) + value + chr(34) if where == "node" else ""}}}'
    ssh = f'ssh: {{{field}: "{value}"}}\n' if where == "fleet" else ""
    path = tmp_path / "fleet.yaml"
    path.write_text(f"fleet: f\n{ssh}pools:\n  - {{name: p, provider: ssh, gpu: {{type: H100, count: 1}}, "
                    f"nodes: [{node}]}}\n")
    with pytest.raises(ConfigError) as e:
        load_fleet(path)
    assert words in str(e.value) and "\n" not in str(e.value).strip(), str(e.value)
