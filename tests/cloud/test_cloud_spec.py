"""The cloud pool options in fleet.yaml (DESIGN section 9, extended additively)."""

from __future__ import annotations

import textwrap

import pytest

from gridctl.errors import ConfigError
from gridctl.spec import load_fleet

FLEET = """\
fleet: f
pools:
  - name: aws-l4
    provider: aws
    region: us-east-1
    instance_type: g6.xlarge
    image: ami-0123456789abcdef0
    {aws_extra}
  - name: gcp-l4
    provider: gcp
    project: p
    zone: us-central1-a
    machine_type: g2-standard-8
    image: projects/p/global/images/family/gpu
    {gcp_extra}
"""


def load(tmp_path, aws_extra: str = "spot: false", gcp_extra: str = "spot: false"):
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET.format(aws_extra=aws_extra, gcp_extra=gcp_extra))
    return load_fleet(path)


def test_cloud_options_have_defaults_that_change_nothing(tmp_path):
    aws, gcp = load(tmp_path).pools
    for pool in (aws, gcp):
        assert (pool.launch_timeout, pool.idle_timeout, pool.replace, pool.keep_for_triage, pool.fallback,
                pool.launch_rate) == (600.0, None, True, False, [], 10)
    assert aws.endpoint_url is None and aws.metadata_endpoint == "http://169.254.169.254"
    assert gcp.api_endpoint is None and gcp.boot_disk_gb is None


def test_cloud_options_are_read(tmp_path):
    aws_extra = textwrap.indent(textwrap.dedent("""\
        launch_timeout: 15m
        idle_timeout: 1h
        replace: false
        keep_for_triage: true
        fallback: gcp-l4
        launch_rate: 3
        endpoint_url: http://127.0.0.1:5000
        metadata_endpoint: http://127.0.0.1:9"""), " " * 4).lstrip()
    gcp_extra = "api_endpoint: http://127.0.0.1:8080\n    boot_disk_gb: 200"
    aws, gcp = load(tmp_path, aws_extra=aws_extra, gcp_extra=gcp_extra).pools
    assert (aws.launch_timeout, aws.idle_timeout, aws.replace, aws.keep_for_triage, aws.fallback, aws.launch_rate) == \
        (900.0, 3600.0, False, True, ["gcp-l4"], 3)
    assert aws.endpoint_url == "http://127.0.0.1:5000" and aws.metadata_endpoint == "http://127.0.0.1:9"
    assert gcp.api_endpoint == "http://127.0.0.1:8080" and gcp.boot_disk_gb == 200


@pytest.mark.parametrize("extra,words", [
    ("endpoint_url: 127.0.0.1:5000", "endpoint_url: expected a URL"),
    ("launch_timeout: soon", "launch_timeout: expected a duration"),
    ("launch_rate: 0", "launch_rate:"),
    ("fallback: Bad Name", "fallback[0]: invalid name"),
    ("metadata_endpont: http://x", "did you mean 'metadata_endpoint'"),
])
def test_bad_cloud_options_name_file_line_and_field(tmp_path, extra, words):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, aws_extra=extra)
    assert any(words in p and ":8 pools[0]." in p for p in caught.value.problems), caught.value.problems
