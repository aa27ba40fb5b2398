"""Helpers for tests/cloud: pool builders and one harness per provider for the contract suite.

A harness knows how to reach its cloud *around* gridctl (boto3 directly, the fake's own state)
to create instances gridctl did not launch, to count what really exists, and to inject faults,
so the contract tests can check the adapter against the cloud rather than against itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"
SECRET = "gridctl-test-secret-9f8e7d"   # the fake secret key: no error message may contain it
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class AwsWorld:
    endpoint: str
    vpc: str
    subnet: str
    public_subnet: str
    security_group: str
    image: str

    def client(self):
        """A boto3 client for setting the scene, with explicit endpoint and dummy credentials."""
        import boto3
        return boto3.client("ec2", region_name=REGION, endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key=SECRET)


def fleet_name() -> str:
    """A fresh fleet per test: moto and the fake live for the whole session."""
    return f"t{uuid.uuid4().hex[:10]}"


def aws_pool(world: AwsWorld, **overrides):
    from providers.aws import AwsPool
    fields = {"name": "aws-l4", "provider": "aws", "region": REGION, "instance_type": "g6.xlarge",
              "image": world.image, "subnet": world.subnet, "security_groups": [world.security_group],
              "max": 4, "gpu": {"type": "L4", "count": 1, "memory_gb": 24}}
    return AwsPool.model_validate({**fields, **overrides})


def gcp_pool(endpoint: str | None, **overrides):
    from providers.gcp import GcpPool
    fields = {"name": "gcp-l4", "provider": "gcp", "project": "test-project", "zone": "us-central1-a",
              "machine_type": "g2-standard-8", "image": "projects/p/global/images/family/gpu",
              "accelerators": {"nvidia-l4": 1}, "address": "private", "max": 4, "api_endpoint": endpoint,
              "gpu": {"type": "L4", "count": 1, "memory_gb": 24}}
    return GcpPool.model_validate({**fields, **overrides})


def ec2_error(code: str, message: str, status: int, *, times: int | None = None, headers: dict | None = None):
    """A botocore `before-send` handler answering with an EC2 error, so the real client parses it:
    every time, or the first `times` times (later requests go on to moto). `calls` lists every
    request the handler saw, answered or not."""
    from botocore.awsrequest import AWSResponse

    body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>test</RequestID></Response>").encode()

    class Raw:
        def stream(self, **_):
            yield body

    calls = []

    def handler(request, **_):
        calls.append(request.url)
        if times is not None and len(calls) > times:
            return None
        return AWSResponse(request.url, status, {"Content-Type": "text/xml;charset=UTF-8", **(headers or {})}, Raw())

    handler.calls = calls
    return handler


class AwsHarness:
    name = "aws"
    subnet_prefix = "127.21.1."

    def __init__(self, world: AwsWorld, state_dir: Path):
        self.world, self.state_dir, self.fleet = world, state_dir, fleet_name()

    def provider(self, pool: str = "aws-l4", fleet: str | None = None, **overrides):
        from providers.aws import AwsProvider
        return AwsProvider(fleet or self.fleet, aws_pool(self.world, name=pool, **overrides), self.state_dir)

    def untagged(self) -> str:
        reply = self.world.client().run_instances(ImageId=self.world.image, InstanceType="g6.xlarge", MinCount=1,
                                                  MaxCount=1, SubnetId=self.world.subnet)
        return reply["Instances"][0]["InstanceId"]

    def alive(self, instance_id: str) -> bool:
        reply = self.world.client().describe_instances(InstanceIds=[instance_id])
        state = reply["Reservations"][0]["Instances"][0]["State"]["Name"]
        return state not in ("shutting-down", "terminated")

    def count_request(self, request_id: str) -> int:
        """Live instances carrying this request tag, as EC2 (moto) sees them."""
        reply = self.world.client().describe_instances(Filters=[
            {"Name": "tag:gridctl-request", "Values": [request_id]},
            {"Name": "tag:gridctl-fleet", "Values": [self.fleet]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
        return sum(len(r["Instances"]) for r in reply["Reservations"])

    def inject_capacity(self, provider) -> None:
        provider.client().meta.events.register("before-send.ec2.RunInstances", ec2_error(
            "InsufficientInstanceCapacity", "We currently do not have sufficient g6.xlarge capacity in the "
            "Availability Zone you requested (us-east-1b).", 500))

    def inject_auth_refusal(self, provider) -> None:
        provider.client().meta.events.register("before-send.ec2.DescribeInstances", ec2_error(
            "AuthFailure", "AWS was not able to validate the provided access credentials", 401))


class GcpHarness:
    name = "gcp"
    subnet_prefix = "127.22.1."

    def __init__(self, fake, state_dir: Path):
        self.fake, self.state_dir, self.fleet = fake, state_dir, fleet_name()

    def provider(self, pool: str = "gcp-l4", fleet: str | None = None, **overrides):
        from providers.gcp import GcpProvider
        return GcpProvider(fleet or self.fleet, gcp_pool(self.fake.endpoint, name=pool, **overrides), self.state_dir)

    def untagged(self) -> str:
        """An instance inserted through the real client without our labels (a person's VM)."""
        from google.cloud import compute_v1
        name = f"stranger-{uuid.uuid4().hex[:8]}"
        client = self.provider().clients()[0]
        client.insert_unary(request=compute_v1.InsertInstanceRequest(
            project="test-project", zone="us-central1-a", instance_resource=compute_v1.Instance(
                name=name, machine_type="zones/us-central1-a/machineTypes/g2-standard-8")))
        return name

    def alive(self, instance_id: str) -> bool:
        return instance_id in self.fake.instances

    def count_request(self, request_id: str) -> int:
        want = {"gridctl-request": request_id, "gridctl-fleet": self.fleet}
        return sum(1 for i in self.fake.instances.values() if all(i["labels"].get(k) == v for k, v in want.items()))

    def inject_capacity(self, provider) -> None:
        self.fake.fail_next_insert("ZONE_RESOURCE_POOL_EXHAUSTED")

    def inject_auth_refusal(self, provider) -> None:
        self.fake.fail_next(401, "Request had invalid authentication credentials.", "authError")


class LocalHarness:
    """`provider: local` has no CREATE: the contract for it is listing only its own pool."""

    name = "local"
    subnet_prefix = ""

    def __init__(self, state_dir: Path):
        self.state_dir, self.fleet = state_dir, fleet_name()

    def provider(self, pool: str = "sim", fleet: str | None = None, **overrides):
        from providers.local import LocalPool
        from providers.local import LocalProvider
        spec = LocalPool.model_validate({"name": pool, "provider": "local", "count": 2,
                                         "dir": str(self.state_dir / "nodes"), **overrides})
        return LocalProvider(fleet or self.fleet, spec, self.state_dir)
