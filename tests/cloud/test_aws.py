"""AWS adapter against moto_server through the real boto3 client: what the contract suite does not
cover (lost answers, error classes, credentials, addresses, what reaches EC2)."""

from __future__ import annotations

import uuid

import pytest

from cloud_support import SECRET, AwsHarness, ec2_error
from fleetsim import free_port
from providers.base import (AuthError, CapacityError, InstanceState, LaunchRequest, QuotaError,
                            TransientError)


@pytest.fixture
def aws(aws_env, tmp_path):
    return AwsHarness(aws_env, tmp_path)


def rid() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def raw(world, instance_id: str) -> dict:
    return world.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def test_lost_run_instances_answer_is_retried_without_a_second_instance(aws):
    """moto ignores ClientToken (checked first), so only the request tag lookup prevents a duplicate."""
    ec2 = aws.world.client()
    token = uuid.uuid4().hex
    twice = [ec2.run_instances(ImageId=aws.world.image, InstanceType="g6.xlarge", MinCount=1, MaxCount=1,
                               SubnetId=aws.world.subnet, ClientToken=token)["Instances"][0]["InstanceId"]
             for _ in range(2)]
    assert twice[0] != twice[1], "moto now honours ClientToken; this test no longer proves the tag lookup"
    ec2.terminate_instances(InstanceIds=twice)

    from botocore.exceptions import ReadTimeoutError

    provider, request = aws.provider(), LaunchRequest(rid())

    def lose_answer(**_):
        raise ReadTimeoutError(endpoint_url=aws.world.endpoint)

    provider.client().meta.events.register_first("after-call.ec2.RunInstances", lose_answer)
    with pytest.raises(TransientError):
        provider.launch(request)
    assert aws.count_request(request.request_id) == 1     # EC2 did launch it
    again = aws.provider().launch(request)
    assert len(again) == 1 and aws.count_request(request.request_id) == 1


@pytest.mark.parametrize("code,status,error", [
    ("InsufficientInstanceCapacity", 500, CapacityError),
    ("Unsupported", 400, CapacityError),
    ("SpotMaxPriceTooLow", 400, CapacityError),
    ("InstanceLimitExceeded", 400, QuotaError),
    ("VcpuLimitExceeded", 400, QuotaError),
    ("MaxSpotInstanceCountExceeded", 400, QuotaError),
    ("RequestLimitExceeded", 503, TransientError),
    ("InternalError", 500, TransientError),
    ("UnauthorizedOperation", 403, AuthError),
])
def test_run_instances_errors_are_classified(aws, code, status, error):
    provider = aws.provider()
    handler = ec2_error(code, f"{code} from the test", status)
    provider.client().meta.events.register("before-send.ec2.RunInstances", handler)
    with pytest.raises(error) as caught:
        provider.launch(LaunchRequest(rid()))
    retried = status >= 500   # botocore's standard mode tries a 5xx three times in all
    assert len(handler.calls) == (3 if retried else 1) and "\n" not in str(caught.value)
    if error is TransientError:
        assert caught.value.delay > 0


def test_throttling_once_is_retried_inside_the_call_whatever_the_aws_config_says(aws, cloud_env):
    cloud_env.setenv("AWS_MAX_ATTEMPTS", "1")      # gridctl's retry policy is its own: the pass
    cloud_env.setenv("AWS_RETRY_MODE", "legacy")   # around it is the outer retry
    provider = aws.provider()
    launched = provider.launch(LaunchRequest(rid()))
    handler = ec2_error("RequestLimitExceeded", "Request limit exceeded.", 503, times=1)
    provider.client().meta.events.register("before-send.ec2.DescribeInstances", handler)
    assert set(provider.list_instances()) == {i.id for i in launched}
    assert len(handler.calls) == 2


def test_throttling_that_outlasts_the_retries_is_transient_for_a_few_seconds(aws):
    provider = aws.provider()
    handler = ec2_error("RequestLimitExceeded", "Request limit exceeded.", 503)
    provider.client().meta.events.register("before-send.ec2.DescribeInstances", handler)
    with pytest.raises(TransientError) as caught:
        provider.list_instances()
    assert len(handler.calls) == 3 and caught.value.delay == 5.0


def test_retry_after_from_aws_is_the_delay(aws):
    provider = aws.provider()
    handler = ec2_error("Unavailable", "The server is overloaded.", 503, headers={"Retry-After": "7"})
    provider.client().meta.events.register("before-send.ec2.DescribeInstances", handler)
    with pytest.raises(TransientError) as caught:
        provider.list_instances()
    assert caught.value.delay == 7.0


def test_missing_credentials_name_what_to_set(aws, cloud_env):
    cloud_env.delenv("AWS_ACCESS_KEY_ID")
    cloud_env.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError) as caught:
        aws.provider().list_instances()
    message = str(caught.value)
    assert "\n" not in message
    for expected in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "~/.aws/credentials", "aws-l4"):
        assert expected in message


def test_partial_credentials_never_echo_the_secret(aws, cloud_env):
    cloud_env.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(AuthError) as caught:
        aws.provider().launch(LaunchRequest(rid()))
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_unreachable_endpoint_is_transient(aws, cloud_env):
    cloud_env.delenv("AWS_ENDPOINT_URL")
    provider = aws.provider(endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match="cannot reach AWS"):
        provider.list_instances()


def test_pool_endpoint_url_is_used_without_the_environment_variable(aws, cloud_env):
    cloud_env.delenv("AWS_ENDPOINT_URL")
    provider = aws.provider(endpoint_url=aws.world.endpoint)
    launched = provider.launch(LaunchRequest(rid()))
    assert set(provider.list_instances()) == {i.id for i in launched}


def test_address_picks_the_public_ip_when_present_else_the_private_one(aws):
    public = aws.provider(pool="pub", subnet=aws.world.public_subnet).launch(LaunchRequest(rid()))[0]
    details = raw(aws.world, public.id)
    assert details.get("PublicIpAddress") and public.host == details["PublicIpAddress"]   # read, never contacted
    private_pool = aws.provider(pool="priv", subnet=aws.world.public_subnet, address="private")
    private = private_pool.launch(LaunchRequest(rid()))[0]
    assert private.host.startswith("127.21.2.")
    plain = aws.provider().launch(LaunchRequest(rid()))[0]   # no public IP in the private subnet: falls back
    assert plain.host.startswith("127.21.1.")


def test_spot_root_volume_key_and_pool_tags_reach_ec2(aws):
    ec2 = aws.world.client()
    key = f"k{uuid.uuid4().hex[:8]}"
    ec2.create_key_pair(KeyName=key)
    provider = aws.provider(spot=True, root_volume_gb=200, key_name=key, tags={"team": "ml"})
    inst = provider.launch(LaunchRequest(rid()))[0]
    details = raw(aws.world, inst.id)
    assert inst.spot and details.get("InstanceLifecycle") == "spot"
    assert details["KeyName"] == key and details["SubnetId"] == aws.world.subnet
    assert [g["GroupId"] for g in details["SecurityGroups"]] == [aws.world.security_group]
    tags = {t["Key"]: t["Value"] for t in details["Tags"]}
    assert tags["team"] == "ml" and tags["Name"] == f"{aws.fleet}-aws-l4"
    volume_id = details["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Size"] == 200
    on_demand = aws.provider().launch(LaunchRequest(rid(), spot=False))[0]
    assert not on_demand.spot and "InstanceLifecycle" not in raw(aws.world, on_demand.id)


def test_spot_interruption_is_listed_as_preempted_and_plain_termination_is_not_listed(aws):
    provider = aws.provider()
    base = {"InstanceId": "i-1", "State": {"Name": "terminated"}, "InstanceLifecycle": "spot",
            "PrivateIpAddress": "127.21.1.9", "Tags": []}
    interrupted = {**base, "StateReason": {"Code": "Server.SpotInstanceTermination"}}
    assert provider._instance(interrupted).state is InstanceState.PREEMPTED
    assert provider._instance({**base, "StateReason": {"Code": "Client.UserInitiatedShutdown"}}).state \
        is InstanceState.TERMINATED
    inst = provider.launch(LaunchRequest(rid()))[0]
    provider.terminate([inst.id])
    assert inst.id not in provider.list_instances()


def test_metadata_endpoint_is_a_pool_option_and_never_contacted(aws):
    provider = aws.provider(metadata_endpoint="http://127.0.0.1:9")
    assert provider.pool.metadata_endpoint == "http://127.0.0.1:9"
    assert aws.provider().pool.metadata_endpoint == "http://169.254.169.254"
    provider.launch(LaunchRequest(rid()))   # the audit hook would refuse any non-loopback connection
