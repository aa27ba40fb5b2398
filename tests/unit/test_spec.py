"""spec.load_fleet: the shipped configs load, and every mistake names file:line field with clear words.

Guards against a user staring at a pydantic dump, or at the wrong line, when a fleet file is wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from unit_support import write_yaml

from gridctl.errors import ConfigError
from gridctl.spec import (AwsPool, LocalPool, SshPool, load_fleet, parse_duration, state_path)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    return write_yaml(tmp_path, text, name)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_fleet(path)
    assert e.value.exit_code == 2
    return e.value.problems


def one_problem(path: Path) -> str:
    (p,) = problems(path)
    return p


# ---------------------------------------------------------------- what ships loads

@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    fleet = load_fleet(config)
    assert fleet.pools and fleet.node_count() >= 1


def test_example_fleet_has_what_the_design_documents(tmp_path):
    copy = write(tmp_path, (CONFIGS / "fleet.example.yaml").read_text())
    fleet = load_fleet(copy)
    assert fleet.fleet == "prod-inference"
    assert [(p.name, p.provider) for p in fleet.pools] == [("onprem-h100", "ssh"), ("aws-l4", "aws"), ("sim", "local")]
    assert fleet.ssh.connect_timeout == 5.0 and fleet.health.interval == 15.0 and fleet.health.stale_after == 60.0
    assert fleet.ssh.host_key_policy == "accept-new"
    onprem, aws, sim = fleet.pools
    assert isinstance(onprem, SshPool) and [n.port for n in onprem.nodes] == [None, 2222]
    assert isinstance(aws, AwsPool) and (aws.min, aws.max, aws.spot) == (0, 4, True)
    assert isinstance(sim, LocalPool) and sim.count == 3 and sim.gpu.count == 4
    assert fleet.node_count() == 2 + 0 + 3


# ---------------------------------------------------------------- durations

@pytest.mark.parametrize("text, seconds", [("15s", 15.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0),
                                           ("1d", 86400.0), ("1.5s", 1.5), ("30", 30.0), (45, 45.0), (2.5, 2.5),
                                           (" 10 s ", 10.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "15 seconds", "1h30m", "-5s", -1, True, "", "s"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_durations_in_a_fleet_file(tmp_path):
    fleet = load_fleet(write(tmp_path, """
        fleet: f
        ssh: {connect_timeout: 500ms}
        health: {interval: 2m, probe_timeout: 15s, stale_after: 1h}
        pools:
          - {name: sim, provider: local}
    """))
    assert (fleet.ssh.connect_timeout, fleet.health.interval, fleet.health.probe_timeout,
            fleet.health.stale_after) == (0.5, 120.0, 15.0, 3600.0)


def test_bad_duration_names_file_line_field(tmp_path):
    path = write(tmp_path, """
        fleet: f
        health:
          interval: 15s
          probe_timeout: soon
        pools:
          - {name: sim, provider: local}
    """)
    assert one_problem(path) == f"{path}:4 health.probe_timeout: expected a duration like 15s, 2m, 1h; got 'soon'"


def test_zero_probe_timeout_is_rejected(tmp_path):
    path = write(tmp_path, """
        fleet: f
        health: {probe_timeout: 0s}
        pools:
          - {name: sim, provider: local}
    """)
    assert one_problem(path).startswith(f"{path}:2 health.probe_timeout: ")


# ---------------------------------------------------------------- file-level errors

def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: a
            provider: ssh
            nodes: [ {name: a, host: h}
          - name: b
    """)
    (p,) = problems(path)
    assert p.startswith(f"{path}:6: invalid YAML: ")


def test_tab_indentation_is_a_yaml_error_with_a_line(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: f\npools:\n\t- name: a\n")
    assert one_problem(path).startswith(f"{path}:3: invalid YAML: ")


def test_empty_file(tmp_path):
    path = write(tmp_path, "")
    assert one_problem(path) == f"{path}: file is empty"


def test_comment_only_file_is_empty(tmp_path):
    path = write(tmp_path, "# nothing yet\n")
    assert one_problem(path) == f"{path}: file is empty"


def test_top_level_list(tmp_path):
    path = write(tmp_path, "- fleet: f\n- pools: []\n")
    assert one_problem(path) == f"{path}:1: expected a mapping with fleet, pools, ... at the top level"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert one_problem(path) == f"{path}: file not found"


def test_not_utf8(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"fleet: f\xff\xfe\n")
    assert one_problem(path).startswith(f"{path}: cannot read")


def test_duplicate_key_names_its_line(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - {name: sim, provider: local}
        fleet: g
    """)
    assert one_problem(path) == f"{path}:4 fleet: duplicate key"


def test_recursive_yaml_alias_is_a_config_error(tmp_path):
    path = write(tmp_path, """
        fleet: f
        extra: &loop [*loop]
        pools:
          - {name: sim, provider: local}
    """)
    with pytest.raises(ConfigError):
        load_fleet(path)


# ---------------------------------------------------------------- field errors: file:line field: words

def test_wrong_types_name_file_line_field(tmp_path):
    path = write(tmp_path, """
        fleet: f
        ssh:
          port: twenty-two
        health:
          concurrency: many
          unhealthy_after: 0
        pools:
          - name: sim
            provider: local
            count: [3]
            gpu: {count: lots}
    """)
    ps = problems(path)
    assert [p.split(": ", 1)[0] for p in ps] == [
        f"{path}:3 ssh.port", f"{path}:5 health.concurrency", f"{path}:6 health.unhealthy_after",
        f"{path}:10 pools[0].count", f"{path}:11 pools[0].gpu.count"]
    assert "expected a whole number" in ps[0] and "must be at least 1" in ps[2]
    assert all("pydantic" not in p and "https://" not in p for p in ps)


def test_unknown_key_gets_did_you_mean(tmp_path):
    path = write(tmp_path, """
        fleet: f
        ssh:
          user: ubuntu
          connect_timout: 5s
        pools:
          - {name: sim, provider: local}
    """)
    assert one_problem(path) == (f"{path}:4 ssh.connect_timout: unknown key 'connect_timout' "
                                 "(did you mean 'connect_timeout'?)")


def test_unknown_key_inside_a_pool_uses_that_pools_fields(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: onprem
            provider: ssh
            ssh: {conect_timeout: 2s}
            nodes:
              - {name: a, hots: a.example}
          - name: sim
            provider: local
            cout: 3
    """)
    assert problems(path) == [
        f"{path}:5 pools[0].ssh.conect_timeout: unknown key 'conect_timeout' (did you mean 'connect_timeout'?)",
        f"{path}:7 pools[0].nodes[0].host: required field is missing",
        f"{path}:7 pools[0].nodes[0].hots: unknown key 'hots' (did you mean 'host'?)",
        f"{path}:10 pools[1].cout: unknown key 'cout' (did you mean 'count'?)",
    ]


def test_unknown_key_with_nothing_close_lists_the_allowed_keys(tmp_path):
    path = write(tmp_path, """
        fleet: f
        health: {zzz: 1}
        pools:
          - {name: sim, provider: local}
    """)
    p = one_problem(path)
    assert p.startswith(f"{path}:2 health.zzz: unknown key 'zzz' (allowed: ")
    assert "probe_timeout" in p and "stale_after" in p


def test_each_pool_is_read_by_the_pool_model_its_provider_declares(tmp_path):
    import providers
    fleet = load_fleet(write(tmp_path, (CONFIGS / "fleet.example.yaml").read_text()))
    assert [type(p) for p in fleet.pools] == [providers.pool_model(p.provider) for p in fleet.pools]
    assert [type(p).__module__ for p in fleet.pools] == ["providers.static", "providers.aws", "providers.local"]


def test_a_pool_that_is_not_a_mapping_says_so(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - sim
    """)
    assert one_problem(path) == f"{path}:3 pools[0]: expected a mapping with name, provider, ..."


def test_unknown_provider_names_the_provider_line(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: sim
            provider: local
          - name: cloud
            gpu: {count: 1}
            provider: aws2
    """)
    assert one_problem(path) == f"{path}:7 pools[1].provider: unknown provider 'aws2' (known: ssh, local, aws, gcp)"


def test_missing_provider(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: sim
    """)
    assert one_problem(path) == f"{path}:3 pools[0].provider: missing (known: ssh, local, aws, gcp)"


def test_missing_required_keys(tmp_path):
    path = write(tmp_path, """
        pools:
          - name: cloud
            provider: aws
            region: us-east-1
    """)
    assert problems(path) == [
        f"{path}:1 fleet: required field is missing",
        f"{path}:2 pools[0].image: required field is missing",
        f"{path}:2 pools[0].instance_type: required field is missing",
    ]


def test_missing_key_file(tmp_path):
    path = write(tmp_path, """
        fleet: f
        ssh:
          key: ./keys/id_ed25519
        pools:
          - {name: sim, provider: local}
    """)
    assert one_problem(path) == f"{path}:3 ssh.key: key file not found: ./keys/id_ed25519"


def test_key_file_is_found_relative_to_the_fleet_file(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_ed25519").write_text("not really a key\n")
    path = write(tmp_path, """
        fleet: f
        ssh: {key: keys/id_ed25519}
        pools:
          - {name: sim, provider: local}
    """)
    assert load_fleet(path).ssh.key == tmp_path.resolve() / "keys" / "id_ed25519"


@pytest.mark.parametrize("name", ["x;rm -rf /", "a$(reboot)", "a`id`", "a b", "a|b", "a&b", "../etc", "UPPER",
                                  "-leading-dash", ""])
def test_node_name_with_shell_metacharacters_is_rejected(tmp_path, name):
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: f\npools:\n  - name: onprem\n    provider: ssh\n    nodes:\n"
                    f"      - name: '{name}'\n        host: h.example\n")
    p = one_problem(path)
    assert p.startswith(f"{path}:6 pools[0].nodes[0].name: invalid name ")


@pytest.mark.parametrize("host", ["h;reboot", "h $(id)", "-oProxyCommand=x"])
def test_host_with_shell_metacharacters_is_rejected(tmp_path, host):
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: f\npools:\n  - name: onprem\n    provider: ssh\n    nodes:\n"
                    f"      - name: a\n        host: '{host}'\n")
    assert one_problem(path).startswith(f"{path}:7 pools[0].nodes[0].host: invalid host ")


def test_duplicate_node_names_are_rejected(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: a
            provider: ssh
            nodes:
              - {name: n1, host: h1.example}
          - name: b
            provider: ssh
            nodes:
              - {name: n1, host: h2.example}
    """)
    assert "node name 'n1' is already used by pools[0].nodes[0]" in one_problem(path)


def test_duplicate_pool_names_are_rejected(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - {name: a, provider: local}
          - {name: a, provider: local}
    """)
    assert "pool name 'a' is already used by pools[0]" in one_problem(path)


def test_duplicate_node_name_points_at_the_second_node(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: a
            provider: ssh
            nodes:
              - {name: n1, host: h1.example}
          - name: b
            provider: ssh
            nodes:
              - {name: n1, host: h2.example}
    """)
    assert one_problem(path).startswith(f"{path}:10 pools[1].nodes[0].name: ")


def test_min_greater_than_max_on_a_cloud_pool(tmp_path):
    path = write(tmp_path, """
        fleet: f
        pools:
          - name: l4
            provider: aws
            region: us-east-1
            instance_type: g6.xlarge
            image: ami-0123456789abcdef0
            min: 5
            max: 2
    """)
    assert one_problem(path) == f"{path}:3 pools[0]: min (5) is larger than max (2)"


def test_every_problem_is_reported_at_once_in_line_order(tmp_path):
    path = write(tmp_path, """
        fleet: Bad_Name
        ssh: {port: 0}
        pools:
          - {name: sim, provider: local, count: 0}
    """)
    ps = problems(path)
    assert [p.split(" ", 1)[0] for p in ps] == [f"{path}:1", f"{path}:2", f"{path}:4"]


def test_state_path_defaults_to_xdg_state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    fleet = load_fleet(write(tmp_path, "fleet: f1\npools:\n  - {name: sim, provider: local}\n"))
    assert state_path(fleet) == tmp_path / "xdg" / "gridctl" / "f1.db"


def test_relative_state_path_is_relative_to_the_fleet_file(tmp_path):
    fleet = load_fleet(write(tmp_path, "fleet: f1\nstate: st/f1.db\npools:\n  - {name: sim, provider: local}\n"))
    assert state_path(fleet) == tmp_path.resolve() / "st" / "f1.db"
