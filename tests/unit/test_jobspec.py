"""jobspec: job.yaml and `gridctl run` flags -> a validated JobSpec, with errors a person can act on.

Guards against: a job that cannot run accepted into the store (empty command, NUL bytes, env names
sh cannot export), a user overriding the variables gridctl sets (CUDA_VISIBLE_DEVICES), class
rules silently ignored (replicas on a batch job), typos accepted without a word, errors that do
not name the file, line and field (or the flag), and list commands whose words are re-split or
expanded by the node's shell.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from unit_support import write_yaml

from gridctl.errors import ConfigError
from gridctl.jobspec import RESERVED_ENV, JobSpec, job_from_flags, load_job, spec_from_store


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    return write_yaml(tmp_path, text, name)


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert e.value.exit_code == 2
    return e.value.problems


def flag_problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        job_from_flags(data)
    return e.value.problems


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "command": "run", **kw})


# ---------------------------------------------------------------- valid specs

def test_a_full_job_file_loads(tmp_path):
    path = write(tmp_path, """
        name: llama-serve
        class: service
        command: ["python", "-m", "vllm.entrypoints.api_server", "--port", "8000"]
        replicas: 3
        gpus: 2
        gpu_type: H100
        gpu_memory_gb: 80
        pool: west
        env:
          HF_HOME: /data/hf
          NUM: 4
        work_dir: /srv/app
        recovery:
          backoff: 10s
          max_backoff: 5m
          hang_timeout: 2m
          unreachable_grace: 1m
          infra_exit_codes: [74, 134]
          max_duration: 1d
          pending_timeout: 1h
    """)
    j = load_job(path)
    assert (j.name, j.job_class, j.replicas, j.gpus, j.gpu_type, j.gpu_memory_gb, j.pool) == \
        ("llama-serve", "service", 3, 2, "H100", 80.0, "west")
    assert j.env == {"HF_HOME": "/data/hf", "NUM": "4"}        # numbers become strings
    r = j.recovery
    assert (r.backoff, r.max_backoff, r.hang_timeout, r.unreachable_grace, r.max_duration, r.pending_timeout) == \
        (10.0, 300.0, 120.0, 60.0, 86400.0, 3600.0)
    assert r.infra_exit_codes == [74, 134]
    assert j.spreads is True                                     # a service with replicas spreads by default


@pytest.mark.parametrize("data, job_class, spreads", [
    ({"name": "a", "command": "x"}, "service", False),
    ({"name": "a", "command": "x", "replicas": 2}, "service", True),
    ({"name": "a", "command": "x", "replicas": 2, "spread": False}, "service", False),
    ({"name": "a", "class": "batch", "command": "x", "spread": True}, "batch", True),
    ({"name": "a", "class": "training", "command": "x", "checkpoint_dir": "/ckpt"}, "training", False),
    ({"name": "a", "class": "manual", "command": "x", "gpus": 0}, "manual", False),
], ids=["service-default", "service-replicas-spread", "spread-off", "batch-spread", "training-ckpt", "manual-0gpu"])
def test_valid_specs(data, job_class, spreads):
    j = JobSpec.model_validate(data)
    assert j.job_class == job_class and j.spreads is spreads


def test_the_stored_form_round_trips():
    j = spec(**{"class": "training", "checkpoint_dir": "/c", "env": {"A": "1"}, "recovery": {"backoff": "1m"}})
    stored = j.to_store()
    assert stored["class"] == "training"
    assert spec_from_store(stored) == j


# ---------------------------------------------------------------- class rules

@pytest.mark.parametrize("job_class", ["batch", "training", "manual"])
def test_replicas_only_for_services(job_class):
    with pytest.raises(ValueError, match="only service jobs have replicas"):
        spec(**{"class": job_class, "replicas": 2})


@pytest.mark.parametrize("job_class", ["service", "batch", "manual"])
def test_checkpoint_dir_only_for_training(job_class):
    with pytest.raises(ValueError, match="only training jobs take a checkpoint dir"):
        spec(**{"class": job_class, "checkpoint_dir": "/ckpt"})


def test_unknown_class_is_refused():
    with pytest.raises(ValueError):
        spec(**{"class": "daemon"})


# ---------------------------------------------------------------- env

@pytest.mark.parametrize("key", ["1BAD", "A-B", "A B", "", "A=B", "X" * 129, "é"])
def test_env_names_sh_cannot_export_are_refused(key):
    with pytest.raises(ValueError, match="invalid environment variable name"):
        spec(env={key: "v"})


@pytest.mark.parametrize("key", ["_", "a", "A_1", "lower_case", "X" * 128])
def test_env_names_that_are_fine(key):
    assert spec(env={key: "v"}).env == {key: "v"}


@pytest.mark.parametrize("key", RESERVED_ENV)
def test_reserved_env_names_are_set_by_gridctl(key):
    with pytest.raises(ValueError, match=f"{key} is set by gridctl"):
        spec(env={key: "x"})


@pytest.mark.parametrize("value", [None, True, [1], {"a": 1}])
def test_env_values_must_be_strings_or_numbers(value):
    with pytest.raises(ValueError, match="expected a string or number"):
        spec(env={"A": value})


def test_env_value_with_a_nul_byte_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        spec(env={"A": "x\0y"})


# ---------------------------------------------------------------- command

@pytest.mark.parametrize("command", ["", "   ", "\n\t", []], ids=["empty", "spaces", "whitespace", "empty-list"])
def test_empty_command_is_refused(command):
    with pytest.raises(ValueError, match="command is empty"):
        spec(command=command)


@pytest.mark.parametrize("command", ["echo a\0b", ["echo", "a\0"]], ids=["string", "list"])
def test_nul_byte_in_the_command_is_refused(command):
    with pytest.raises(ValueError, match="NUL byte"):
        spec(command=command)


@pytest.mark.parametrize("field, value", [
    ("gpus", -1), ("gpus", 65), ("replicas", 0), ("gpu_memory_gb", 0), ("name", "Upper"), ("name", "-x"),
])
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(ValueError):
        spec(**{field: value})


def test_a_name_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError, match="invalid name"):
        spec(name="abc\n")


@pytest.mark.parametrize("codes", [[0], [256], [-1]])
def test_infra_exit_codes_are_1_to_255(codes):
    with pytest.raises(ValueError, match="exit codes are 1..255"):
        spec(recovery={"infra_exit_codes": codes})


# ---------------------------------------------------------------- shell_command

@pytest.mark.parametrize("words", [
    ["echo", "a b"],
    ["echo", "$(echo INJECTED)", "`echo INJECTED`", "$HOME"],
    ["printf", "%s\n", "it's", 'say "hi"', "a;b", "x|y", "&&", "*"],
    ["echo", "line1\nline2"],
    ["echo", ""],
], ids=["space", "substitution", "quotes-and-metachars", "newline", "empty-word"])
def test_list_command_words_reach_the_process_verbatim(words):
    cmd = spec(command=words).shell_command
    assert shlex.split(cmd) == words
    seen = subprocess.run(["sh", "-c", f'set -- {cmd}; printf "[%s]" "$@"'], capture_output=True, text=True).stdout
    assert seen == "".join(f"[{w}]" for w in words)


def test_string_command_runs_as_written():
    assert spec(command="cd /app && python serve.py | tee log").shell_command == "cd /app && python serve.py | tee log"


# ---------------------------------------------------------------- load_job: file:line field: message

def test_unknown_keys_get_did_you_mean_with_file_and_line(tmp_path):
    path = write(tmp_path, """
        name: t
        comand: run
        gpus: 1
        recovery:
          retires: 3
    """)
    assert load_problems(path) == [
        f"{path}:1 command: required field is missing",
        f"{path}:2 comand: unknown key 'comand' (did you mean 'command'?)",
        f"{path}:5 recovery.retires: unknown key 'retires' (did you mean 'retries'?)",
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path):
    path = write(tmp_path, "name: t\ncommand: run\nzzzz: 1\n")
    (p,) = load_problems(path)
    assert p.startswith(f"{path}:3 zzzz: unknown key 'zzzz' (allowed: ")
    assert "command" in p and "recovery" in p


@pytest.mark.parametrize("body, expected", [
    ("name: t\ncommand: run\nenv:\n  GRIDCTL_ATTEMPT: x\n", ":3 env: GRIDCTL_ATTEMPT is set by gridctl"),
    ("name: t\ncommand: ''\n", ":2 command: command is empty"),
    ("name: t\ncommand: run\ngpus: -2\n", ":3 gpus: must be at least 0; got -2"),
    ("name: t\ncommand: run\nrecovery:\n  backoff: soon\n",
     ":4 recovery.backoff: expected a duration like 15s, 2m, 1h; got 'soon'"),
    ("name: T\ncommand: run\n", ":1 name: invalid name 'T'"),
    ("name: t\nclass: daemon\ncommand: run\n", ":2 class: expected 'service', 'batch', 'training' or 'manual'; got 'daemon'"),
], ids=["reserved-env", "empty-command", "negative-gpus", "bad-duration", "bad-name", "bad-class"])
def test_load_job_errors_name_file_line_and_field(tmp_path, body, expected):
    path = write(tmp_path, body)
    (p,) = load_problems(path)
    assert p.startswith(f"{path}{expected}")


def test_every_problem_is_reported_at_once_in_line_order(tmp_path):
    path = write(tmp_path, "name: t\ncommand: ''\ngpus: -1\nreplicas: 0\n")
    got = load_problems(path)
    assert [p.split(" ", 1)[0] for p in got] == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_class_rule_violation_in_a_file_is_refused(tmp_path):
    path = write(tmp_path, "name: t\nclass: batch\ncommand: run\nreplicas: 2\n")
    (p,) = load_problems(path)
    assert "only service jobs have replicas (this is a batch job)" in p


def test_class_rule_violation_names_the_fields_line(tmp_path):
    path = write(tmp_path, "name: t\nclass: batch\ncommand: run\nreplicas: 2\n")
    (p,) = load_problems(path)
    assert p.startswith(f"{path}:4 replicas: ")


def test_top_level_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- name: t\n")
    assert load_problems(path) == [f"{path}:1: expected a mapping with name, command, ... at the top level"]


def test_missing_file(tmp_path):
    problems = load_problems(tmp_path / "nope.yaml")
    assert problems == [f"{tmp_path / 'nope.yaml'}: file not found"]


# ---------------------------------------------------------------- job_from_flags: errors name the flag

@pytest.mark.parametrize("data, expected", [
    ({"name": "Bad", "command": ["x"]}, "--name: invalid name 'Bad'"),
    ({"name": "j", "command": []}, "--command: command is empty"),
    ({"name": "j", "command": ["a\0"]}, "--command: command contains a NUL byte"),
    ({"name": "j", "command": ["x"], "gpus": -1}, "--gpus: must be at least 0; got -1"),
    ({"name": "j", "command": ["x"], "class": "daemon"}, "--class: expected 'service', 'batch', 'training' or 'manual'; got 'daemon'"),
    ({"name": "j", "command": ["x"], "gpu_type": 3}, "--gpu-type: expected text; got 3"),
    ({"name": "j", "command": ["x"], "env": {"A-B": "1"}}, "--env: invalid environment variable name 'A-B'"),
    ({"name": "j", "command": ["x"], "env": {"CUDA_VISIBLE_DEVICES": "0"}},
     "--env: CUDA_VISIBLE_DEVICES is set by gridctl"),
    ({"name": "j", "command": ["x"], "replicas": 0}, "--replicas: must be at least 1; got 0"),
], ids=["name", "empty-command", "nul", "gpus", "class", "gpu-type", "env-name", "env-reserved", "replicas"])
def test_job_from_flags_errors_name_the_flag(data, expected):
    (p,) = flag_problems(data)
    assert p.startswith(expected), p


def test_job_from_flags_ignores_unset_flags():
    j = job_from_flags({"name": "j", "class": None, "command": ["echo", "hi"], "gpus": None, "replicas": None,
                        "gpu_type": None, "pool": None, "env": {}})
    assert (j.job_class, j.gpus, j.replicas) == ("service", 1, 1)
    assert j.shell_command == "echo hi"


def test_job_from_flags_reports_every_problem():
    got = flag_problems({"name": "Bad", "command": [], "gpus": -1})
    assert [p.split(":")[0] for p in got] == ["--command", "--gpus", "--name"]


def test_job_from_flags_class_rule_names_the_flag():
    (p,) = flag_problems({"name": "j", "class": "batch", "command": ["x"], "replicas": 3})
    assert p.startswith("--replicas: ")
