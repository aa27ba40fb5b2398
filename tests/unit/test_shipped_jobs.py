"""Every job spec shipped in configs/jobs/ loads: the examples in the README stay true."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridctl.jobspec import load_job

JOBS = Path(__file__).resolve().parents[2] / "configs" / "jobs"


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_spec_loads(path):
    spec = load_job(path)
    assert spec.name == path.stem
    assert spec.shell_command


def test_there_is_an_example_of_each_recovering_class():
    classes = {load_job(p).job_class for p in JOBS.glob("*.yaml")}
    assert {"service", "batch", "training"} <= classes
