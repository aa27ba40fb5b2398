"""The provider contract (providers/base.py), run against every adapter: local, aws (moto_server),
gcp (the local GCE endpoint). The cloud is checked around gridctl, through each harness."""

from __future__ import annotations

import uuid

import pytest

from cloud_support import SECRET, AwsHarness, GcpHarness, LocalHarness
from providers.base import (TAG_FLEET, TAG_POOL, TAG_REQUEST, TAG_TRIAGE, AuthError, CapacityError, Feature,
                            InstanceState, LaunchRequest, ProviderUnavailable)


@pytest.fixture(params=["local", "aws", "gcp"])
def harness(request, tmp_path, cloud_env):
    if request.param == "aws":
        return AwsHarness(request.getfixturevalue("aws_env"), tmp_path)
    if request.param == "gcp":
        return GcpHarness(request.getfixturevalue("gce_fake"), tmp_path)
    return LocalHarness(tmp_path)


def creates(harness) -> None:
    if Feature.CREATE not in harness.provider().features:
        pytest.skip(f"provider {harness.name} cannot create machines")


def request_id() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def test_list_shows_only_this_pools_instances(harness):
    provider = harness.provider()
    if Feature.CREATE in provider.features:
        assert provider.list_instances() == {}
        harness.provider(pool="other-pool").launch(LaunchRequest(request_id()))
        harness.provider(fleet=harness.fleet + "x").launch(LaunchRequest(request_id()))
        stranger = harness.untagged()
        assert provider.list_instances() == {}
        assert stranger not in harness.provider(pool="other-pool").list_instances()
    else:
        other = set(harness.provider(pool="other-pool").list_instances())
        mine = provider.list_instances()
        assert mine and not set(mine) & other
    assert all(i.pool == provider.pool.name and i.provider == provider.name for i in provider.list_instances().values())


def test_launch_tags_instances_with_fleet_pool_and_request(harness):
    creates(harness)
    provider, rid = harness.provider(), request_id()
    launched = provider.launch(LaunchRequest(rid, count=2))
    assert len(launched) == 2 and len({i.id for i in launched}) == 2
    for inst in launched:
        tags = (inst.tags[TAG_FLEET], inst.tags[TAG_POOL], inst.tags[TAG_REQUEST])
        assert tags == (harness.fleet, provider.pool.name, rid)
        assert inst.host.startswith(harness.subnet_prefix), inst.host
        assert inst.state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert set(provider.list_instances()) == {i.id for i in launched}


def test_launching_twice_with_one_request_id_creates_nothing_new(harness):
    creates(harness)
    provider, rid = harness.provider(), request_id()
    first = provider.launch(LaunchRequest(rid, count=2))
    again = harness.provider().launch(LaunchRequest(rid, count=2))   # a new pass, a new client
    assert sorted(i.id for i in again) == sorted(i.id for i in first)
    assert harness.count_request(rid) == 2


def test_terminate_is_idempotent_and_unknown_ids_are_fine(harness):
    creates(harness)
    provider = harness.provider()
    launched = provider.launch(LaunchRequest(request_id()))
    ids = [i.id for i in launched]
    provider.terminate(ids)
    provider.terminate(ids)
    provider.terminate(["i-0123456789abcdef0", "never-existed", ""])
    provider.terminate([])
    assert not any(harness.alive(i) for i in ids)
    assert provider.list_instances() == {}


def test_untagged_instance_is_never_listed_or_terminated(harness):
    creates(harness)
    provider = harness.provider()
    stranger = harness.untagged()
    provider.launch(LaunchRequest(request_id()))
    assert stranger not in provider.list_instances()
    provider.terminate([stranger])
    provider.stop([stranger], triage=True)
    assert harness.alive(stranger)


def test_other_pools_instance_is_not_terminated_by_id(harness):
    creates(harness)
    other = harness.provider(pool="other-pool").launch(LaunchRequest(request_id()))[0]
    harness.provider().terminate([other.id])
    assert harness.alive(other.id)


def test_capacity_shortage_is_a_capacity_error(harness):
    creates(harness)
    provider, rid = harness.provider(), request_id()
    harness.inject_capacity(provider)
    with pytest.raises(CapacityError) as caught:
        provider.launch(LaunchRequest(rid))
    assert "\n" not in str(caught.value)
    assert harness.count_request(rid) == 0


def test_refused_credentials_are_an_auth_error_in_one_line_without_the_secret(harness):
    creates(harness)
    provider = harness.provider()
    harness.inject_auth_refusal(provider)
    with pytest.raises(AuthError) as caught:
        provider.list_instances()
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message and "testing" not in message
    assert "credentials" in message


def test_stopped_instance_is_kept_tagged_for_triage_and_not_taken_for_preempted(harness):
    provider = harness.provider()
    if Feature.STOP not in provider.features:
        pytest.skip(f"provider {harness.name} cannot stop machines")
    inst = harness.provider(spot=True).launch(LaunchRequest(request_id()))[0]
    provider.stop([inst.id])
    assert TAG_TRIAGE not in provider.list_instances()[inst.id].tags
    provider.stop([inst.id], triage=True)    # already stopped: the tag still goes on
    provider.stop([inst.id], triage=True)
    listed = provider.list_instances()[inst.id]
    assert listed.state in (InstanceState.STOPPING, InstanceState.STOPPED)
    assert listed.tags[TAG_TRIAGE] == "true"
    assert harness.alive(inst.id)


def test_provider_without_create_refuses_launch_terminate_and_stop(harness):
    provider = harness.provider()
    if Feature.CREATE in provider.features:
        pytest.skip(f"provider {harness.name} can create machines")
    with pytest.raises(ProviderUnavailable, match="cannot create"):
        provider.launch(LaunchRequest(request_id()))
    with pytest.raises(ProviderUnavailable):
        provider.terminate(["x"])
    with pytest.raises(ProviderUnavailable):
        provider.stop(["x"])


def test_request_ids_must_be_valid_tag_and_label_values():
    for bad in ("", "Upper", "has space", "a" * 64, "-lead", "x\n"):
        with pytest.raises(ValueError):
            LaunchRequest(bad)
    with pytest.raises(ValueError):
        LaunchRequest("ok", count=0)
