"""Fixtures for the cloud adapter tests: a moto EC2 server and the local GCE endpoint.

Network rule: these tests connect only to 127.0.0.0/8. moto gets a VPC 127.21.0.0/16 and a subnet
127.21.1.0/24, so launched instances have 127.21.1.x addresses; the GCE fake hands out 127.22.x.
An audit hook refuses any other connection while a cloud test runs, and the environment turns off
every credential lookup that would reach a metadata server (169.254.169.254).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto")
pytest.importorskip("google.cloud.compute_v1")

from cloud_support import REGION, SECRET, AwsWorld  # noqa: E402
from fleetsim import free_port  # noqa: E402
from gcefake import GceFake  # noqa: E402

_GUARD = {"on": False}


def _loopback_only(event: str, args: tuple) -> None:
    if event != "socket.connect" or not _GUARD["on"]:
        return
    address = args[1]
    if not isinstance(address, tuple):
        return   # unix sockets
    try:
        ok = ipaddress.ip_address(address[0]).is_loopback
    except ValueError:
        ok = address[0] == "localhost"
    if not ok:
        raise ConnectionRefusedError(f"cloud tests connect only to 127.0.0.0/8, not {address[0]}")


sys.addaudithook(_loopback_only)


@pytest.fixture(autouse=True)
def loopback_only():
    _GUARD["on"] = True
    yield
    _GUARD["on"] = False


@pytest.fixture
def cloud_env(monkeypatch, tmp_path):
    """No real credentials, config files or metadata servers for either SDK."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_EC2", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "GOOGLE_APPLICATION_CREDENTIALS", "GRIDCTL_GCE_ENDPOINT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    return monkeypatch


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto_server on a free loopback port, as a subprocess ended by its PID."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(log_path.parent),
           "AWS_EC2_METADATA_DISABLED": "true"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def aws_world(moto_server):
    """A VPC 127.21.0.0/16 with a private subnet 127.21.1.0/24 (instances get 127.21.1.x) and a
    subnet 127.21.2.0/24 that maps public IPs on launch (read, never connected to)."""
    world = AwsWorld(moto_server, "", "", "", "", "")
    ec2 = world.client()
    vpc = ec2.create_vpc(CidrBlock="127.21.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.21.1.0/24")["Subnet"]["SubnetId"]
    public = ec2.create_subnet(VpcId=vpc, CidrBlock="127.21.2.0/24")["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=public, MapPublicIpOnLaunch={"Value": True})
    group = ec2.create_security_group(GroupName="gridctl-test", Description="tests", VpcId=vpc)["GroupId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return AwsWorld(moto_server, vpc, subnet, public, group, image)


@pytest.fixture
def aws_env(cloud_env, aws_world):
    """This test's boto3 sees moto through AWS_ENDPOINT_URL, with dummy credentials."""
    cloud_env.setenv("AWS_ENDPOINT_URL", aws_world.endpoint)
    cloud_env.setenv("AWS_ACCESS_KEY_ID", "testing")
    cloud_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return aws_world


@pytest.fixture(scope="session")
def gce_fake():
    fake = GceFake().start()
    yield fake
    fake.stop()
