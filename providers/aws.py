"""`provider: aws`: EC2 instances through boto3. Contract: providers/base.py.

Called by the reconcile pass: inventory (`list_instances`) and act (`launch`, `terminate`, `stop`).
Only instances tagged `gridctl-fleet=<fleet>` and `gridctl-pool=<pool>` are ever listed, stopped
or terminated. boto3 is imported on first use, never at gridctl import; the endpoint is the pool's
`endpoint_url`, else $AWS_ENDPOINT_URL (boto3 reads it), else AWS's own. Each call is retried by
botocore's standard mode (throttling, 5xx, dropped connections; RunInstances is safe to retry by
its ClientToken) a bounded number of times, whatever the ambient AWS config says, because the
reconcile pass is the outer retry. botocore errors become our error tree at this boundary, in
`_translate`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Optional

from pydantic import Field

from .base import (TAG_FLEET, TAG_POOL, TAG_REQUEST, TAG_TRIAGE, AuthError, CapacityError, Feature, Instance,
                   InstanceState, LaunchRequest, NotFound, Provider, ProviderError, QuotaError, TransientError,
                   retry_after_s)
from .schema import CloudPoolSpec, Endpoint

_STATES = {
    "pending": InstanceState.PENDING, "running": InstanceState.RUNNING, "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPED, "shutting-down": InstanceState.TERMINATED,
    "terminated": InstanceState.TERMINATED,
}
_CAPACITY = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
             "InsufficientReservedInstanceCapacity", "InsufficientFreeAddressesInSubnet", "Unsupported",
             "SpotMaxPriceTooLow"}
_QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"}
_AUTH = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
         "ExpiredToken", "OptInRequired", "Blocked"}
_THROTTLE = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled"}
_SERVER = {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"}
_NOT_FOUND = {"InvalidInstanceID.NotFound"}
API_ATTEMPTS = 3           # tries of one EC2 call, first included (botocore standard mode)
_THROTTLE_DELAY_S = 5.0    # TransientError.delay when AWS gives no Retry-After
_SERVER_DELAY_S = 10.0
_UNREACHABLE_DELAY_S = 15.0
_CREDENTIALS_HINT = "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials"
_LIVE = ["pending", "running", "stopping", "stopped"]


class AwsPool(CloudPoolSpec):
    provider: Literal["aws"]
    region: str
    instance_type: str
    image: str
    subnet: Optional[str] = None
    security_groups: list[str] = []
    key_name: Optional[str] = None
    root_volume_gb: Optional[int] = Field(None, ge=8)
    tags: dict[str, str] = {}
    endpoint_url: Endpoint = None       # EC2 endpoint; else $AWS_ENDPOINT_URL, else AWS's own
    metadata_endpoint: Endpoint = "http://169.254.169.254"   # IMDS as the nodes see it (spot notices)


class AwsProvider(Provider):
    name = "aws"
    pool_model = AwsPool
    features = frozenset({Feature.CREATE, Feature.SPOT, Feature.STOP})
    requires = {"boto3": "boto3"}

    def __init__(self, fleet, pool, state_dir):
        super().__init__(fleet, pool, state_dir)
        self._client: Any = None

    def client(self) -> Any:
        """The boto3 EC2 client, made on first use (no network I/O until a call)."""
        if self._client is None:
            with self._translated("connect"):
                import boto3
                from botocore.config import Config
                session = boto3.session.Session(region_name=self.pool.region)
                self._client = session.client(
                    "ec2", endpoint_url=getattr(self.pool, "endpoint_url", None) or None,
                    config=Config(connect_timeout=5, read_timeout=30, user_agent_extra="gridctl",
                                  retries={"mode": "standard", "total_max_attempts": API_ATTEMPTS}))
        return self._client

    def list_instances(self) -> dict[str, Instance]:
        """Contract: base.Provider. Terminated instances are left out unless a spot interruption
        ended them: those are listed as `preempted` while EC2 still shows them (about an hour)."""
        found = (self._instance(raw) for raw in self._describe([]))
        return {i.id: i for i in found if i.state is not InstanceState.TERMINATED}

    def launch(self, req: LaunchRequest) -> list[Instance]:
        """Contract: base.Provider. The request tag is looked up first (moto, unlike EC2, ignores
        ClientToken); the ClientToken still guards the seconds before a new instance is listed."""
        existing = [self._instance(raw) for raw in self._describe([_filter(f"tag:{TAG_REQUEST}", [req.request_id])])]
        if existing:
            return existing
        params = self._run_params(req)
        with self._translated("RunInstances"):
            reply = self.client().run_instances(**params)
        return [self._instance(raw) for raw in reply["Instances"]]

    def terminate(self, ids: Iterable[str]) -> None:
        """Contract: base.Provider."""
        ours = [i for i, state in self._ours(ids).items() if state not in ("shutting-down", "terminated")]
        if ours:
            self._each("TerminateInstances", ours, lambda chunk: self.client().terminate_instances(InstanceIds=chunk))

    def stop(self, ids: Iterable[str], *, triage: bool = False) -> None:
        """Contract: base.Provider. The triage tag is written before the stop, so a stopped
        instance kept for a person always carries it. A one-time spot instance cannot be
        stopped; EC2's refusal comes back as ProviderError."""
        ours = {i: state for i, state in self._ours(ids).items() if state not in ("shutting-down", "terminated")}
        if triage and ours:
            tag = [{"Key": TAG_TRIAGE, "Value": "true"}]
            self._each("CreateTags", list(ours), lambda chunk: self.client().create_tags(Resources=chunk, Tags=tag))
        running = [i for i, state in ours.items() if state in ("pending", "running")]
        if running:
            self._each("StopInstances", running, lambda chunk: self.client().stop_instances(InstanceIds=chunk))

    # -- helpers -----------------------------------------------------------------------------

    def _describe(self, extra: list[dict]) -> list[dict]:
        filters = [_filter(f"tag:{TAG_FLEET}", [self.fleet]), _filter(f"tag:{TAG_POOL}", [self.pool.name])] + extra
        out = []
        with self._translated("DescribeInstances"):
            for page in self.client().get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    out.extend(reservation.get("Instances", []))
        return out

    def _ours(self, ids: Iterable[str]) -> dict[str, str]:
        """Those of `ids` that carry our fleet and pool tags -> their EC2 state name. A filter,
        not InstanceIds=, so an unknown id is simply absent instead of an error."""
        wanted = sorted({i for i in ids if i})
        ours = {}
        for start in range(0, len(wanted), 100):
            for raw in self._describe([_filter("instance-id", wanted[start:start + 100])]):
                ours[raw["InstanceId"]] = raw["State"]["Name"]
        return ours

    def _each(self, op: str, ids: list[str], call) -> None:
        """Call in chunks; an id that vanished meanwhile is success, so retry the rest one by one."""
        for start in range(0, len(ids), 100):
            chunk = ids[start:start + 100]
            try:
                with self._translated(op):
                    call(chunk)
            except NotFound:
                for one in chunk:
                    try:
                        with self._translated(op):
                            call([one])
                    except NotFound:
                        pass

    def _run_params(self, req: LaunchRequest) -> dict:
        pool = self.pool
        spot = pool.spot if req.spot is None else req.spot
        tags = {**pool.tags, "Name": f"{self.fleet}-{pool.name}", TAG_FLEET: self.fleet, TAG_POOL: pool.name,
                TAG_REQUEST: req.request_id}
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        token = hashlib.sha256(f"{self.fleet}/{pool.name}/{req.request_id}".encode()).hexdigest()
        params: dict[str, Any] = {
            "ImageId": pool.image, "InstanceType": pool.instance_type, "MinCount": req.count,
            "MaxCount": req.count, "ClientToken": token,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list},
                                  {"ResourceType": "volume", "Tags": tag_list}],
        }
        if pool.subnet:
            params["SubnetId"] = pool.subnet
        if pool.security_groups:
            params["SecurityGroupIds"] = list(pool.security_groups)
        if pool.key_name:
            params["KeyName"] = pool.key_name
        if pool.root_volume_gb:
            params["BlockDeviceMappings"] = [{"DeviceName": self._root_device(), "Ebs": {
                "VolumeSize": pool.root_volume_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}]
        if spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    def _root_device(self) -> str:
        with self._translated("DescribeImages"):
            images = self.client().describe_images(ImageIds=[self.pool.image]).get("Images", [])
        return (images[0].get("RootDeviceName") if images else None) or "/dev/sda1"

    def _instance(self, raw: dict) -> Instance:
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        state = _STATES.get(raw["State"]["Name"], InstanceState.PENDING)
        if state in (InstanceState.TERMINATED, InstanceState.STOPPED, InstanceState.STOPPING) and \
                raw.get("StateReason", {}).get("Code", "").startswith("Server.SpotInstance"):
            state = InstanceState.PREEMPTED
        public, private = raw.get("PublicIpAddress"), raw.get("PrivateIpAddress")
        host = (public if self.pool.address == "public" and public else private) or ""
        launched = raw.get("LaunchTime")
        return Instance(id=raw["InstanceId"], provider=self.name, pool=self.pool.name, state=state, host=host,
                        instance_type=raw.get("InstanceType"), zone=raw.get("Placement", {}).get("AvailabilityZone"),
                        spot=raw.get("InstanceLifecycle") == "spot", tags=tags,
                        launched_at=launched.timestamp() if launched is not None else None)

    @contextmanager
    def _translated(self, op: str) -> Iterator[None]:
        try:
            yield
        except ProviderError:
            raise
        except Exception as e:
            ours = _translate(e, op, self.pool.name)
            if ours is None:
                raise
            raise ours from e


def _filter(name: str, values: list[str]) -> dict:
    return {"Name": name, "Values": values}


def _translate(e: Exception, op: str, pool: str) -> ProviderError | None:
    """botocore error -> our error tree, one line, never a credential. None: not ours to map."""
    from botocore import exceptions as bx
    where = f"pool '{pool}', {op}"
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code, message = err.get("Code", ""), err.get("Message", "")
        meta = e.response.get("ResponseMetadata", {})
        status, told = meta.get("HTTPStatusCode") or 0, retry_after_s(meta.get("HTTPHeaders"))
        if code in _CAPACITY or code.startswith("Insufficient") and code.endswith("Capacity"):
            return CapacityError(f"AWS has no capacity ({where}): {code}: {message}")
        if code in _QUOTA:
            return QuotaError(f"AWS account limit ({where}): {code}: {message}")
        if code in _AUTH:
            return AuthError(f"AWS refused the credentials ({where}): {code}; check the IAM policy, or "
                             f"{_CREDENTIALS_HINT}")
        if code in _NOT_FOUND:
            return NotFound(f"EC2 instance not found ({where}): {message}")
        if code in _THROTTLE:
            return TransientError(f"AWS is throttling requests ({where}): {code}",
                                  delay=_THROTTLE_DELAY_S if told is None else told)
        if code in _SERVER or status >= 500:
            return TransientError(f"AWS server error ({where}): {code or status}: {message}",
                                  delay=_SERVER_DELAY_S if told is None else told)
        return ProviderError(f"AWS error ({where}): {code}: {message}")
    credential_errors = tuple(getattr(bx, n) for n in (
        "NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "CredentialRetrievalError",
        "TokenRetrievalError", "SSOError", "UnauthorizedSSOTokenError") if hasattr(bx, n))
    if isinstance(e, credential_errors):
        return AuthError(f"AWS credentials not usable ({where}): {type(e).__name__}; {_CREDENTIALS_HINT}")
    if isinstance(e, bx.NoRegionError):
        return AuthError(f"AWS region not set ({where}): set the pool's region or AWS_DEFAULT_REGION")
    if isinstance(e, (bx.HTTPClientError, bx.ConnectionError)):
        return TransientError(f"cannot reach AWS ({where}): {type(e).__name__}", delay=_UNREACHABLE_DELAY_S)
    if isinstance(e, bx.BotoCoreError):   # e.g. a parameter botocore rejects before sending
        return ProviderError(f"AWS request failed ({where}): {type(e).__name__}: {e}")
    return None
