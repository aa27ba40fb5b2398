"""`provider: gcp`: Compute Engine instances through google-cloud-compute (REST). Contract:
providers/base.py.

Called by the reconcile pass: inventory (`list_instances`) and act (`launch`, `terminate`, `stop`).
Only instances labelled `gridctl-fleet=<fleet>` and `gridctl-pool=<pool>` are ever listed, stopped
or deleted. The SDK is imported on first use, never at gridctl import. The endpoint is the pool's
`api_endpoint`, else $GRIDCTL_GCE_ENDPOINT (both for local test endpoints: anonymous credentials),
else Google's own with application default credentials. Calls that are safe to repeat (reads;
insert, delete and stop, which carry a requestId) are retried inside the call by
google.api_core's Retry, for at most API_RETRY_DEADLINE_S; the reconcile pass is the outer retry.
google errors become our error tree at this boundary, in `_translate`; capacity shortage arrives
either as an HTTP error or, more often, in the zone operation's error list, and both end as
CapacityError.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import Field

from .base import (TAG_FLEET, TAG_POOL, TAG_REQUEST, TAG_TRIAGE, AuthError, CapacityError, Feature, Instance,
                   InstanceState, LaunchRequest, NotFound, Provider, ProviderError, QuotaError, TransientError,
                   retry_after_s)
from .schema import CloudPoolSpec, Endpoint

_STATES = {
    "PROVISIONING": InstanceState.PENDING, "STAGING": InstanceState.PENDING, "REPAIRING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING, "STOPPING": InstanceState.STOPPING, "SUSPENDING": InstanceState.STOPPING,
    "SUSPENDED": InstanceState.STOPPED, "TERMINATED": InstanceState.STOPPED,
}
_CAPACITY_MARKERS = ("ZONE_RESOURCE_POOL_EXHAUSTED", "RESOURCE_POOL_EXHAUSTED", "DOES NOT HAVE ENOUGH RESOURCES",
                     "STOCKOUT")
_CREDENTIALS_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run "
                     "`gcloud auth application-default login`")
TAG_STOPPED = "gridctl-stopped"   # set by `stop`: a TERMINATED spot instance without it was preempted
_OP_WAIT_S = 30.0        # how long launch waits for an insert to settle before returning it pending
_TIMEOUT_S = 30.0        # one HTTP request
API_RETRY_DEADLINE_S = 20.0   # retrying one call stops after this; tests set 0 to see the first error
_THROTTLE_DELAY_S = 5.0  # TransientError.delay when GCE gives no Retry-After
_SERVER_DELAY_S = 10.0
_UNREACHABLE_DELAY_S = 15.0
_ID_SPACE = uuid.UUID("5d0c7f53-3a53-4c38-9a57-6f1f3b0e6c11")   # GCE requestIds derived from ours


class GcpPool(CloudPoolSpec):
    provider: Literal["gcp"]
    project: str
    zone: str
    machine_type: str
    image: str
    accelerators: dict[str, int] = {}
    network: Optional[str] = None
    labels: dict[str, str] = {}
    boot_disk_gb: Optional[int] = Field(None, ge=10)
    api_endpoint: Endpoint = None       # Compute API endpoint; else $GRIDCTL_GCE_ENDPOINT, else Google's own
    metadata_endpoint: Endpoint = "http://metadata.google.internal"   # as the nodes see it (preemption notices)


class GcpProvider(Provider):
    name = "gcp"
    pool_model = GcpPool
    features = frozenset({Feature.CREATE, Feature.SPOT, Feature.STOP})
    requires = {"google.cloud.compute_v1": "google-cloud-compute"}

    def __init__(self, fleet, pool, state_dir):
        super().__init__(fleet, pool, state_dir)
        self._instances: Any = None
        self._operations: Any = None

    def clients(self) -> tuple[Any, Any]:
        """(InstancesClient, ZoneOperationsClient), made on first use; no network I/O for a test
        endpoint, a credential lookup otherwise."""
        if self._instances is None:
            with self._translated("connect"):
                from google.api_core.client_options import ClientOptions
                from google.cloud import compute_v1
                endpoint = getattr(self.pool, "api_endpoint", None) or os.environ.get("GRIDCTL_GCE_ENDPOINT")
                if endpoint:
                    from google.auth.credentials import AnonymousCredentials
                    credentials, options = AnonymousCredentials(), ClientOptions(api_endpoint=endpoint)
                else:
                    import google.auth
                    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/compute"])
                    options = None
                kw = {"transport": "rest", "credentials": credentials, "client_options": options}
                self._instances = compute_v1.InstancesClient(**kw)
                self._operations = compute_v1.ZoneOperationsClient(**kw)
        return self._instances, self._operations

    def list_instances(self) -> dict[str, Instance]:
        """Contract: base.Provider. Ids are instance names. A spot instance that GCE stopped is
        listed as `preempted` until it is deleted."""
        return {i.id: i for i in (self._instance(raw) for raw in self._list({}))}

    def launch(self, req: LaunchRequest) -> list[Instance]:
        """Contract: base.Provider. One insert per instance, each with a deterministic name and
        GCE requestId, after a lookup by the request label; GCE also answers a repeated requestId
        with the first operation, so a retry never creates twice."""
        existing = {raw.name: raw for raw in self._list({TAG_REQUEST: req.request_id})}
        out = []
        for index in range(req.count):
            name = self._name(req, index)
            raw = existing.get(name) or self._insert(name, req, index)
            out.append(self._instance(raw) if raw is not None else self._pending(name, req))
        return out

    def terminate(self, ids: Iterable[str]) -> None:
        """Contract: base.Provider. Does not wait for the delete operation to finish."""
        from google.cloud import compute_v1
        for raw in self._ours(ids):
            request = compute_v1.DeleteInstanceRequest(project=self.pool.project, zone=self.pool.zone,
                                                       instance=raw.name, request_id=_uuid(f"delete/{raw.id}"))
            try:
                with self._translated("instances.delete"):
                    self.clients()[0].delete_unary(request=request, retry=_retry(), timeout=_TIMEOUT_S)
            except NotFound:
                pass

    def stop(self, ids: Iterable[str], *, triage: bool = False) -> None:
        """Contract: base.Provider. Labels go on before the stop: `gridctl-stopped=true` always
        (GCE shows a spot instance we stopped and one it preempted alike, as TERMINATED) and
        `gridctl-triage=true` when asked."""
        from google.cloud import compute_v1
        project, zone = self.pool.project, self.pool.zone
        for raw in self._ours(ids):
            running = raw.status not in ("STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED")
            marks = {**({TAG_STOPPED: "true"} if running else {}), **({TAG_TRIAGE: "true"} if triage else {})}
            try:
                if any(raw.labels.get(k) != v for k, v in marks.items()):
                    labels = compute_v1.InstancesSetLabelsRequest(labels={**raw.labels, **marks},
                                                                  label_fingerprint=raw.label_fingerprint)
                    with self._translated("instances.setLabels"):
                        self.clients()[0].set_labels_unary(request=compute_v1.SetLabelsInstanceRequest(
                            project=project, zone=zone, instance=raw.name,
                            instances_set_labels_request_resource=labels), timeout=_TIMEOUT_S)
                if running:
                    with self._translated("instances.stop"):
                        self.clients()[0].stop_unary(request=compute_v1.StopInstanceRequest(
                            project=project, zone=zone, instance=raw.name, request_id=str(uuid.uuid4())),
                            retry=_retry(), timeout=_TIMEOUT_S)   # the retries share the id; a later stop is new
            except NotFound:
                pass

    # -- helpers -----------------------------------------------------------------------------

    def _ours_labels(self) -> dict[str, str]:
        return {TAG_FLEET: _label(self.fleet), TAG_POOL: _label(self.pool.name)}

    def _list(self, extra: dict[str, str]) -> list[Any]:
        """Instances carrying our labels (and `extra`), checked again here, not only by the filter."""
        from google.cloud import compute_v1
        want = {**self._ours_labels(), **extra}
        flt = " AND ".join(f'labels.{k} = "{v}"' for k, v in want.items())
        request = compute_v1.ListInstancesRequest(project=self.pool.project, zone=self.pool.zone, filter=flt)
        with self._translated("instances.list"):
            found = list(self.clients()[0].list(request=request, retry=_retry(), timeout=_TIMEOUT_S))
        return [raw for raw in found if all(raw.labels.get(k) == v for k, v in want.items())]

    def _get(self, name: str) -> Any | None:
        from google.cloud import compute_v1
        request = compute_v1.GetInstanceRequest(project=self.pool.project, zone=self.pool.zone, instance=name)
        try:
            with self._translated("instances.get"):
                return self.clients()[0].get(request=request, retry=_retry(), timeout=_TIMEOUT_S)
        except NotFound:
            return None

    def _ours(self, ids: Iterable[str]) -> list[Any]:
        """Those of `ids` that exist and carry our fleet and pool labels."""
        want = self._ours_labels()
        found = (self._get(name) for name in sorted({i for i in ids if i}))
        return [raw for raw in found if raw is not None and all(raw.labels.get(k) == v for k, v in want.items())]

    def _insert(self, name: str, req: LaunchRequest, index: int) -> Any | None:
        """Insert one instance and wait a little for the operation; the instance, or None while it
        is still being created. Raises CapacityError / QuotaError from a failed operation."""
        from google.api_core import exceptions as gx
        from google.cloud import compute_v1
        request = compute_v1.InsertInstanceRequest(
            project=self.pool.project, zone=self.pool.zone, instance_resource=self._resource(name, req),
            request_id=_uuid(f"{self.fleet}/{self.pool.name}/{req.request_id}/{index}"))
        try:
            with self._translated("instances.insert", launching=True):
                op = self.clients()[0].insert_unary(request=request, retry=_retry(launching=True), timeout=_TIMEOUT_S)
        except ProviderError as e:
            if not isinstance(e.__cause__, gx.Conflict):
                raise
            op = None   # the name exists: ours from an earlier try, or a stranger's (checked below)
        if op is not None:
            self._wait(op)
        raw = self._get(name)
        if raw is not None and raw.labels.get(TAG_REQUEST) != req.request_id:
            raise ProviderError(f"GCE instance name '{name}' is taken by an instance gridctl did not launch "
                                f"(pool '{self.pool.name}')")
        return raw

    def _wait(self, op: Any) -> None:
        from google.cloud import compute_v1
        deadline = time.monotonic() + _OP_WAIT_S
        while op.status != compute_v1.Operation.Status.DONE and time.monotonic() < deadline:
            time.sleep(1.0)
            request = compute_v1.GetZoneOperationRequest(project=self.pool.project, zone=self.pool.zone,
                                                         operation=op.name)
            with self._translated("zoneOperations.get"):
                op = self.clients()[1].get(request=request, retry=_retry(), timeout=_TIMEOUT_S)
        errors = [(err.code, err.message) for err in op.error.errors] if op.error else []
        if errors:
            raise _operation_error(errors, self.pool.name)

    def _resource(self, name: str, req: LaunchRequest) -> Any:
        from google.cloud import compute_v1
        pool, zone = self.pool, self.pool.zone
        spot = pool.spot if req.spot is None else req.spot
        labels = {**{_label(k): _label(v) for k, v in pool.labels.items()}, **self._ours_labels(),
                  TAG_REQUEST: req.request_id}
        disk = compute_v1.AttachedDiskInitializeParams(source_image=pool.image)
        if pool.boot_disk_gb:
            disk.disk_size_gb = pool.boot_disk_gb
        network = pool.network or "default"
        nic = compute_v1.NetworkInterface(network=network if "/" in network else f"global/networks/{network}")
        if pool.address == "public":
            nic.access_configs = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        resource = compute_v1.Instance(
            name=name, machine_type=f"zones/{zone}/machineTypes/{pool.machine_type}", labels=labels,
            disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=disk)],
            network_interfaces=[nic],
            guest_accelerators=[compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{kind}", accelerator_count=count)
                for kind, count in pool.accelerators.items()])
        if spot:
            resource.scheduling = compute_v1.Scheduling(provisioning_model="SPOT", instance_termination_action="STOP",
                                                        automatic_restart=False, on_host_maintenance="TERMINATE")
        elif pool.accelerators:   # GPUs cannot live-migrate
            resource.scheduling = compute_v1.Scheduling(on_host_maintenance="TERMINATE", automatic_restart=True)
        return resource

    def _name(self, req: LaunchRequest, index: int) -> str:
        """<fleet>-<pool>-<8 hex of the request>-<index>: a valid GCE name, at most 63 characters."""
        prefix = re.sub(r"[^a-z0-9-]", "-", f"{self.fleet}-{self.pool.name}".lower())
        if not prefix[0].isalpha():
            prefix = "g" + prefix
        short = hashlib.sha256(f"{self.fleet}/{self.pool.name}/{req.request_id}".encode()).hexdigest()[:8]
        return f"{prefix[:50].rstrip('-')}-{short}-{index}"

    def _pending(self, name: str, req: LaunchRequest) -> Instance:
        return Instance(id=name, provider=self.name, pool=self.pool.name, state=InstanceState.PENDING, host="",
                        instance_type=self.pool.machine_type, zone=self.pool.zone,
                        spot=self.pool.spot if req.spot is None else req.spot,
                        tags={**self._ours_labels(), TAG_REQUEST: req.request_id})

    def _instance(self, raw: Any) -> Instance:
        labels = dict(raw.labels)
        sched = raw.scheduling
        spot = sched.provisioning_model == "SPOT" or bool(sched.preemptible)
        state = _STATES.get(raw.status, InstanceState.PENDING)
        if raw.status == "TERMINATED" and spot and labels.get(TAG_STOPPED) != "true":
            state = InstanceState.PREEMPTED
        nic = raw.network_interfaces[0] if raw.network_interfaces else None
        private = nic.network_i_p if nic else ""
        public = next((ac.nat_i_p for ac in nic.access_configs if ac.nat_i_p), "") if nic else ""
        host = (public if self.pool.address == "public" and public else private) or ""
        return Instance(id=raw.name, provider=self.name, pool=self.pool.name, state=state, host=host,
                        instance_type=raw.machine_type.rsplit("/", 1)[-1] or None,
                        zone=raw.zone.rsplit("/", 1)[-1] or None, spot=spot, tags=labels,
                        launched_at=_timestamp(raw.creation_timestamp))

    @contextmanager
    def _translated(self, op: str, launching: bool = False) -> Iterator[None]:
        try:
            yield
        except ProviderError:
            raise
        except Exception as e:
            ours = _translate(e, op, self.pool.name, launching)
            if ours is None:
                raise
            raise ours from e


def _retry(launching: bool = False) -> Any:
    """The in-call retry for a call that is safe to repeat: server errors, rate limits and dropped
    connections, with jittered backoff, for at most API_RETRY_DEADLINE_S. An insert refused with
    503 is not retried: that is how GCE says a zone has no capacity, and the pass should ask the
    next pool now."""
    import requests
    from google.api_core import exceptions as gx
    from google.api_core import retry as gr
    from google.auth import exceptions as ax
    kinds = [gx.InternalServerError, gx.BadGateway, gx.GatewayTimeout, gx.TooManyRequests,
             requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, ax.TransportError]
    if not launching:
        kinds.append(gx.ServiceUnavailable)
    return gr.Retry(predicate=gr.if_exception_type(*kinds), initial=0.5, maximum=5.0, multiplier=2.0,
                    timeout=API_RETRY_DEADLINE_S)


def _label(value: str) -> str:
    """A GCE label value: lower-case letters, digits, '-', '_'; at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def _uuid(key: str) -> str:
    return str(uuid.uuid5(_ID_SPACE, key))


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def _operation_error(errors: list[tuple[str, str]], pool: str) -> ProviderError:
    words = "; ".join(f"{code}: {message}" for code, message in errors)
    codes = " ".join(code.upper() for code, _ in errors) + " " + words.upper()
    if any(marker in codes for marker in _CAPACITY_MARKERS):
        return CapacityError(f"GCE has no capacity (pool '{pool}', instances.insert): {words}")
    if "QUOTA_EXCEEDED" in codes:
        return QuotaError(f"GCE quota exceeded (pool '{pool}', instances.insert): {words}")
    return ProviderError(f"GCE refused the instance (pool '{pool}', instances.insert): {words}")


def _translate(e: Exception, op: str, pool: str, launching: bool) -> ProviderError | None:
    """google error -> our error tree, one line, never a credential. None: not ours to map."""
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax
    if isinstance(e, gx.RetryError) and isinstance(e.cause, Exception):
        return _translate(e.cause, op, pool, launching)   # the retries ran out: the last error says why
    where = f"pool '{pool}', {op}"
    # A 401 makes google-auth refresh the credentials and try again: what surfaces is the refresh
    # failing (RefreshError; InvalidOperation for anonymous test credentials), not the 401.
    if isinstance(e, (ax.RefreshError, ax.InvalidOperation)):
        return AuthError(f"Google refused the credentials ({where}): {_CREDENTIALS_HINT}")
    if isinstance(e, ax.DefaultCredentialsError):
        return AuthError(f"Google credentials not found ({where}): {_CREDENTIALS_HINT}")
    if isinstance(e, gx.GoogleAPICallError):
        words = _server_words(e)
        upper = words.upper()
        status = e.code if isinstance(e.code, int) else 0
        if any(marker in upper for marker in _CAPACITY_MARKERS) or (status == 503 and launching):
            return CapacityError(f"GCE has no capacity ({where}): {words}")
        if "QUOTA_EXCEEDED" in upper or "QUOTAEXCEEDED" in upper or (status == 403 and "QUOTA" in upper):
            return QuotaError(f"GCE quota exceeded ({where}): {words}")
        if status == 401:
            return AuthError(f"Google refused the credentials ({where}): {_CREDENTIALS_HINT}")
        if status == 403:
            return AuthError(f"Google denied permission ({where}): give the credentials' account the Compute "
                             f"Instance Admin role, or {_CREDENTIALS_HINT}")
        if status == 404:
            return NotFound(f"GCE resource not found ({where})")
        if status == 429 or status >= 500:
            told = retry_after_s(getattr(getattr(e, "response", None), "headers", None))
            default = _THROTTLE_DELAY_S if status == 429 else _SERVER_DELAY_S
            return TransientError(f"GCE is busy ({where}): {status}: {words}", delay=default if told is None else told)
        return ProviderError(f"GCE error ({where}): {status}: {words}")
    if isinstance(e, (gx.RetryError, ax.TransportError)) or _is_connection_error(e):
        return TransientError(f"cannot reach GCE ({where}): {type(e).__name__}", delay=_UNREACHABLE_DELAY_S)
    if isinstance(e, (gx.GoogleAPIError, ax.GoogleAuthError)):
        return ProviderError(f"GCE request failed ({where}): {type(e).__name__}")
    return None


def _server_words(e: Any) -> str:
    """The server's own message and reasons, without the URL api_core puts in front."""
    parts = []
    for err in e.errors or ():
        if isinstance(err, dict):
            parts.append(" ".join(str(err.get(k, "")) for k in ("reason", "message") if err.get(k)))
    if getattr(e, "reason", None):
        parts.append(str(e.reason))
    return "; ".join(p for p in parts if p) or str(e.message).rsplit(": ", 1)[-1]


def _is_connection_error(e: Exception) -> bool:
    try:
        import requests
    except ImportError:
        return False
    return isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))
