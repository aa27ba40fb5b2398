"""pydantic's own wording never reaches a user (issue 14, item 6): every spec, job and flag error is
in our words, names the field, and quotes the value that was wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gridctl.errors import ConfigError
from gridctl.jobspec import load_job
from gridctl.spec import load_fleet
from gridctl.wording import ours

PYDANTIC_WORDS = ("Input should", "Field required", "Extra inputs", "valid dictionary", "after validation",
                  "instance of", "unable to parse", "List should", "String should")
POOL = "  - {name: a, provider: local, count: 2, gpu: {type: H100, count: 4}}\n"

BAD_FLEETS = [
    ("fleet: x\npools:\n  - {name: a, provider: local, count: many, gpu: {type: H100, count: 4}}\n",
     "pools[0].count: expected a whole number; got 'many'"),
    ("fleet: x\npools: []\n", "pools: needs at least 1 item(s)"),
    ("fleet: x\npools: nope\n", "pools: expected a list; got 'nope'"),
    ("fleet: x\nssh: {port: 99999}\npools:\n" + POOL, "ssh.port: must be at most 65535; got 99999"),
    ("fleet: x\nssh: {host_key_policy: maybe}\npools:\n" + POOL,
     "ssh.host_key_policy: expected 'accept-new' or 'strict'; got 'maybe'"),
    ("fleet: x\npools:\n  - {name: a, provider: local, count: 2, gpu: [1]}\n", "pools[0].gpu: expected a mapping"),
    ("fleet: x\npools:\n  - {name: a, provider: local, count: 2.5, gpu: {type: H100, count: 4}}\n",
     "pools[0].count: expected a whole number; got 2.5"),
    ("pools:\n" + POOL, "fleet: required field is missing"),
    ("fleet: x\nhealth: {concurrency: 1.5}\npools:\n" + POOL, "health.concurrency: expected a whole number; got 1.5"),
]

BAD_JOBS = [
    ("name: j\ncommand: x\ngpus: lots\n", "gpus: expected a whole number; got 'lots'"),
    ("name: j\ncommand: x\nreplicas: 0\n", "replicas: must be at least 1; got 0"),
    ("name: j\ncommand: x\nclass: weird\n", "class: expected 'service', 'batch', 'training' or 'manual'; got 'weird'"),
    ("name: j\ncommand: x\nenv: [1]\n", "env: expected a mapping (key: value)"),
    ("name: j\ncommand: x\nrecovery: {retries: -1}\n", "recovery.retries: must be at least 0; got -1"),
    ("name: j\n", "command: required field is missing"),
]


@pytest.mark.parametrize("text,expected", BAD_FLEETS, ids=[e.split(":")[0] for _, e in BAD_FLEETS])
def test_fleet_spec_errors_are_in_our_words(tmp_path, text, expected):
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_fleet(path)
    assert expected in str(e.value), str(e.value)
    assert not [w for w in PYDANTIC_WORDS if w in str(e.value)], str(e.value)


@pytest.mark.parametrize("text,expected", BAD_JOBS, ids=[e.split(":")[0] for _, e in BAD_JOBS])
def test_job_spec_errors_are_in_our_words(tmp_path, text, expected):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert expected in str(e.value), str(e.value)
    assert not [w for w in PYDANTIC_WORDS if w in str(e.value)], str(e.value)


@pytest.mark.parametrize("args,expected", [
    (["events", "--limit", "abc"], "Invalid value for '--limit': expected a whole number"),
    (["events", "--limit", "0"], "Invalid value for '--limit': must be at least 1"),
    (["logs", "j", "--tail", "-3"], "Invalid value for '--tail': must be at least 0"),
])
def test_flag_values_typer_checks_with_pydantic_are_in_our_words(args, expected):
    res = subprocess.run([sys.executable, "-c", "from gridctl.cli import main; main()", *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and expected in res.stderr, res.stderr
    assert not [w for w in PYDANTIC_WORDS if w in res.stderr], res.stderr


def test_a_message_already_in_our_words_passes_unchanged():
    assert ours("expected a duration like 15s, 2m, 1h; got 'xyz'") == "expected a duration like 15s, 2m, 1h; got 'xyz'"
