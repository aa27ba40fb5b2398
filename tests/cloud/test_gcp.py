"""GCP adapter against the local GCE endpoint through the real google-cloud-compute REST client:
what the contract suite does not cover (lost answers, requestId, error forms, preemption, names,
addresses, credentials)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from cloud_support import REPO, GcpHarness
from providers.base import (AuthError, CapacityError, InstanceState, LaunchRequest, ProviderError, QuotaError,
                            TransientError)

GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.fixture
def gcp(gce_fake, cloud_env, tmp_path):
    return GcpHarness(gce_fake, tmp_path)


def rid() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def inserts(fake) -> list[str]:
    return [path for method, path in fake.requests if method == "POST" and re.search(r"/instances\?", path)]


@pytest.fixture
def no_api_retries(monkeypatch):
    """The adapter's in-call retries give up at once: the first error is the answer."""
    import providers.gcp
    monkeypatch.setattr(providers.gcp, "API_RETRY_DEADLINE_S", 0.0)


def test_lost_insert_answer_is_retried_inside_the_call_without_a_second_instance(gcp):
    request = LaunchRequest(rid())
    before = len(inserts(gcp.fake))
    gcp.fake.lose_next_insert_answer()
    launched = gcp.provider().launch(request)
    assert len(launched) == 1 and launched[0].state is InstanceState.RUNNING
    sent = inserts(gcp.fake)[before:]
    assert len(sent) == 2 and sent[0] == sent[1]     # the same requestId: GCE answers with the first operation
    assert gcp.count_request(request.request_id) == 1


def test_lost_insert_answer_past_the_retries_is_transient_and_the_next_launch_adds_nothing(gcp, no_api_retries):
    request = LaunchRequest(rid())
    gcp.fake.lose_next_insert_answer()
    with pytest.raises(TransientError):
        gcp.provider().launch(request)
    assert gcp.count_request(request.request_id) == 1     # GCE did create it
    again = gcp.provider().launch(request)
    assert len(again) == 1 and again[0].state is InstanceState.RUNNING
    assert gcp.count_request(request.request_id) == 1


def test_retried_insert_sends_the_same_request_id_and_gets_the_first_operation(gcp):
    request = LaunchRequest(rid())
    before = len(inserts(gcp.fake))
    gcp.fake.fail_next_insert("ZONE_RESOURCE_POOL_EXHAUSTED")
    for _ in range(2):   # GCE answers the repeated requestId with the first (failed) operation
        with pytest.raises(CapacityError, match="ZONE_RESOURCE_POOL_EXHAUSTED"):
            gcp.provider().launch(request)
    sent = inserts(gcp.fake)[before:]
    assert len(sent) == 2 and sent[0] == sent[1] and "requestId=" in sent[0]
    assert gcp.count_request(request.request_id) == 0


@pytest.mark.parametrize("code,http_status,error", [
    ("ZONE_RESOURCE_POOL_EXHAUSTED", None, CapacityError),
    ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", None, CapacityError),
    ("ZONE_RESOURCE_POOL_EXHAUSTED", 503, CapacityError),
    ("QUOTA_EXCEEDED", None, QuotaError),
    ("quotaExceeded", 403, QuotaError),
    ("forbidden", 403, AuthError),
    ("invalid", 400, ProviderError),
])
def test_insert_errors_are_classified_in_either_form(gcp, code, http_status, error):
    message = "Quota 'GPUS_ALL_REGIONS' exceeded." if "uota" in code else "refused by the test"
    gcp.fake.fail_next_insert(code, message, http_status=http_status)
    with pytest.raises(error) as caught:
        gcp.provider().launch(LaunchRequest(rid()))
    assert type(caught.value) is error and "\n" not in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_a_server_error_or_rate_limit_once_is_retried_inside_the_call(gcp, status):
    provider = gcp.provider()
    launched = provider.launch(LaunchRequest(rid()))
    before = len(gcp.fake.requests)
    gcp.fake.fail_next(status, "backend error", "backendError")
    assert set(provider.list_instances()) == {i.id for i in launched}
    assert len(gcp.fake.requests) - before == 2


@pytest.mark.parametrize("status,delay", [(500, 10.0), (502, 10.0), (503, 10.0), (429, 5.0)])
def test_server_errors_and_rate_limits_past_the_retries_are_transient(gcp, no_api_retries, status, delay):
    gcp.fake.fail_next(status, "backend error", "backendError")
    with pytest.raises(TransientError) as caught:
        gcp.provider().list_instances()
    assert caught.value.delay == delay and "\n" not in str(caught.value)


def test_retry_after_from_gce_is_the_delay(gcp, no_api_retries):
    gcp.fake.fail_next(429, "Rate Limit Exceeded", "rateLimitExceeded", retry_after="7")
    with pytest.raises(TransientError) as caught:
        gcp.provider().list_instances()
    assert caught.value.delay == 7.0


def test_insert_refused_with_503_is_capacity_at_once_not_retried(gcp):
    before = len(inserts(gcp.fake))
    gcp.fake.fail_next_insert("ZONE_RESOURCE_POOL_EXHAUSTED", "no capacity", http_status=503)
    with pytest.raises(CapacityError):
        gcp.provider().launch(LaunchRequest(rid()))
    assert len(inserts(gcp.fake)) - before == 1


def test_preempted_spot_instance_is_listed_as_preempted_and_can_be_deleted(gcp):
    provider = gcp.provider(spot=True)
    inst = provider.launch(LaunchRequest(rid()))[0]
    body = gcp.fake.instances[inst.id]
    scheduling = body["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT" and scheduling["instanceTerminationAction"] == "STOP"
    assert inst.spot
    gcp.fake.preempt(inst.id)
    assert provider.list_instances()[inst.id].state is InstanceState.PREEMPTED
    provider.terminate([inst.id])
    assert inst.id not in provider.list_instances()


def test_accelerators_and_disk_reach_the_insert(gcp):
    inst = gcp.provider(boot_disk_gb=200, labels={"team": "ML"}).launch(LaunchRequest(rid()))[0]
    body = gcp.fake.instances[inst.id]
    assert body["guestAccelerators"] == [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-l4",
                                          "acceleratorCount": 1}]
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert body["disks"][0]["initializeParams"]["diskSizeGb"] in ("200", 200)
    assert body["machineType"].endswith("/machineTypes/g2-standard-8")
    assert inst.tags["team"] == "ml" and inst.instance_type == "g2-standard-8" and inst.zone == "us-central1-a"


def test_public_address_is_the_nat_ip_and_private_the_network_ip(gcp):
    public = gcp.provider(pool="pub", address="public").launch(LaunchRequest(rid()))[0]
    assert public.host.startswith("127.22.2.")
    assert gcp.fake.instances[public.id]["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    private = gcp.provider().launch(LaunchRequest(rid()))[0]
    assert private.host.startswith("127.22.1.")
    assert "accessConfigs" not in gcp.fake.instances[private.id]["networkInterfaces"][0]


@pytest.mark.parametrize("fleet,pool", [("9lives", "a.b_c"), ("f" * 63, "p" * 63), ("x", "y")])
def test_instance_names_are_valid_for_gce(gcp, fleet, pool):
    provider = gcp.provider(fleet=fleet, pool=pool)
    launched = provider.launch(LaunchRequest(rid(), count=2))
    assert all(GCE_NAME.match(i.id) for i in launched), [i.id for i in launched]
    assert set(provider.list_instances()) == {i.id for i in launched}


def test_name_taken_by_a_stranger_is_an_error_and_the_stranger_is_left_alone(gcp):
    from google.cloud import compute_v1
    provider, request = gcp.provider(), LaunchRequest(rid())
    name = provider._name(request, 0)
    provider.clients()[0].insert_unary(request=compute_v1.InsertInstanceRequest(
        project="test-project", zone="us-central1-a", instance_resource=compute_v1.Instance(name=name)))
    with pytest.raises(ProviderError, match="taken"):
        provider.launch(request)
    assert gcp.alive(name) and provider.list_instances() == {}


def test_endpoint_from_the_environment_variable(gcp, cloud_env):
    cloud_env.setenv("GRIDCTL_GCE_ENDPOINT", gcp.fake.endpoint)
    provider = gcp.provider(api_endpoint=None)
    launched = provider.launch(LaunchRequest(rid()))
    assert set(provider.list_instances()) == {i.id for i in launched}


def test_missing_application_default_credentials_name_how_to_log_in(tmp_path):
    """Without a test endpoint the adapter asks google.auth for ADC: none here, and the metadata
    server check is off (in a subprocess: google.auth reads NO_GCE_CHECK at import)."""
    script = """
import json
from pathlib import Path
from providers.gcp import GcpPool
from providers.gcp import GcpProvider
from providers.base import AuthError
pool = GcpPool(name="gcp-l4", provider="gcp", project="p", zone="z", machine_type="m", image="i")
try:
    GcpProvider("f", pool, Path(".")).list_instances()
except AuthError as e:
    print(json.dumps({"error": str(e)}))
"""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "NO_GCE_CHECK": "true",
           "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)["error"]
    assert "\n" not in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "gcloud auth application-default login" in message
