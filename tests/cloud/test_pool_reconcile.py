"""Cloud pools end to end: reconcile passes against moto (instances in 127.21.1.0/24) and the local GCE
endpoint (127.22.1.x) whose addresses the test sshd answers, so launch, SSH probes, quarantine and
replacement all run for real.

Guards against: launching past `min` (also after a pass killed between the API call and the
record), instances that never become ready, a quarantined instance kept instead of replaced, and
touching an instance gridctl did not launch.
"""

from __future__ import annotations

import yaml

from cloud_support import fleet_name
from txcount import TxCounter
from gridctl.models import NodeState
from gridctl.reconcile import reconcile_once
from gridctl.reconcile.observe import Transports
from gridctl.spec import load_fleet
from gridctl.store import connect, queries, write_tx
from providers.base import LaunchRequest, new_request_id
from providers.local import write_node


def _spec(tmp_path, ssh_fleet, name: str, pools: list[dict]):
    """A fleet whose nodes the test sshd answers (each node keeps its attempts in its own dir)."""
    spec = {
        "fleet": name, "state": str(tmp_path / "state.db"),
        "ssh": {"user": "root", "key": str(ssh_fleet.client_key), "port": ssh_fleet.port,
                "host_key_policy": "accept-new", "known_hosts": str(ssh_fleet.known_hosts), "connect_timeout": "2s",
                "work_dir": str(tmp_path / "work" / "{node}")},
        "health": {"probe_timeout": "4s", "interval": "1s"},
        "pools": pools,
    }
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(spec))
    return load_fleet(tmp_path / "fleet.yaml")


def _sim_nodes(ssh_fleet, prefix: str, gpus: int = 1, gpu_type: str = "L4", memory_gb: float = 24) -> None:
    """A healthy simulated node for every address the cloud emulator may hand out in the subnet."""
    for i in range(2, 255):
        write_node(ssh_fleet.sim_root / f"{prefix}{i}", f"sim-{i}", gpus=gpus, gpu_type=gpu_type, memory_gb=memory_gb)


def _kill_jobs(tmp_path) -> None:
    """End the job processes this test's attempts started (by the pids in their attempt dirs)."""
    import os
    import signal
    from gridctl.launcher import local_attempt_pid
    for pid_file in (tmp_path / "work").glob("*/attempts/*/pid"):
        pid = local_attempt_pid(pid_file.parent)     # never a pid since handed to someone else
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _fleet(tmp_path, world, ssh_fleet, name):
    return _spec(tmp_path, ssh_fleet, name, [{
        "name": "aws-l4", "provider": "aws", "region": "us-east-1", "instance_type": "g6.xlarge",
        "image": world.image, "subnet": world.subnet, "security_groups": [world.security_group], "address": "private",
        "min": 2, "max": 4, "endpoint_url": world.endpoint, "gpu": {"type": "L4", "count": 1, "memory_gb": 24}}])


def _ours(world, name: str) -> dict[str, dict]:
    out = {}
    for res in world.client().describe_instances(Filters=[{"Name": "tag:gridctl-fleet", "Values": [name]}])["Reservations"]:
        for inst in res["Instances"]:
            if inst["State"]["Name"] in ("pending", "running"):
                out[inst["InstanceId"]] = inst
    return out


def _passes(fleet, conn, transports, tmp_path, n: int):
    events = []
    for _ in range(n):
        events += reconcile_once(fleet, conn, transports, tmp_path).events
    return events


def test_aws_pool_reaches_min_replaces_a_sick_instance_and_leaves_others_alone(aws_env, ssh_fleet, tmp_path):
    world = aws_env
    for i in range(2, 255):      # every address moto may hand out in the subnet: a healthy 1-GPU node
        write_node(ssh_fleet.sim_root / f"127.21.1.{i}", f"aws-{i}", gpus=1, gpu_type="L4", memory_gb=24)
    untagged = world.client().run_instances(ImageId=world.image, InstanceType="g6.xlarge", MinCount=1, MaxCount=1,
                                            SubnetId=world.subnet)["Instances"][0]["InstanceId"]
    name = fleet_name()
    fleet = _fleet(tmp_path, world, ssh_fleet, name)
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    try:
        events = _passes(fleet, conn, transports, tmp_path, 3)
        ours = _ours(world, name)
        assert len(ours) == 2, ours
        assert all(i["PrivateIpAddress"].startswith("127.21.1.") for i in ours.values())
        nodes = queries.load_nodes(conn)
        assert sorted(nodes) == sorted(ours) and {n.state for n in nodes.values()} == {NodeState.READY}, nodes
        assert any(e.kind == "instance-launch" for e in events)
        from gridctl.cli.common import node_json
        shown = node_json(nodes[sorted(ours)[0]])
        assert (shown["instance_id"], shown["instance_type"], shown["spot"]) == (sorted(ours)[0], "g6.xlarge", False)
        assert shown["zone"] and shown["launched_at"]

        # a pass killed after the API call but before recording it: the next pass reuses the request id
        world.client().terminate_instances(InstanceIds=[sorted(ours)[0]])
        request = new_request_id()
        with write_tx(conn):
            queries.record_launch(conn, request, "aws-l4", 1, 0.0)
        from providers.aws import AwsProvider
        AwsProvider(name, fleet.pool("aws-l4"), tmp_path).launch(LaunchRequest(request, 1))
        _passes(fleet, conn, transports, tmp_path, 3)
        ours = _ours(world, name)
        assert len(ours) == 2, ours
        assert queries.open_launches(conn) == {}

        # XID 79 on one instance: quarantined, terminated, replaced by a new one that becomes ready
        sick = sorted(ours)[0]
        ip = ours[sick]["PrivateIpAddress"]
        write_node(ssh_fleet.sim_root / ip, sick, gpus=1, gpu_type="L4", memory_gb=24, mode="xid79")
        events = _passes(fleet, conn, transports, tmp_path, 4)
        kinds = [(e.kind, e.node) for e in events]
        assert ("instance-replaced", sick) in kinds, kinds
        ours = _ours(world, name)
        assert sick not in ours and len(ours) == 2
        nodes = queries.load_nodes(conn)
        assert {n for n, r in nodes.items() if r.state is NodeState.READY} == set(ours), nodes

        # the instance gridctl did not launch was never listed, probed or touched
        state = world.client().describe_instances(InstanceIds=[untagged])["Reservations"][0]["Instances"][0]
        assert state["State"]["Name"] == "running" and untagged not in nodes
    finally:
        transports.close()
        conn.close()
        world.client().terminate_instances(InstanceIds=[untagged])


def _gce_ours(fake, name: str) -> dict[str, dict]:
    return {n: i for n, i in fake.instances.items()
            if i.get("labels", {}).get("gridctl-fleet") == name and i.get("status") in ("PROVISIONING", "STAGING", "RUNNING")}


def test_gcp_pool_reaches_min_and_replaces_a_sick_instance(cloud_env, gce_fake, ssh_fleet, tmp_path):
    from cloud_support import GcpHarness
    _sim_nodes(ssh_fleet, "127.22.1.")
    harness = GcpHarness(gce_fake, tmp_path)
    stranger = harness.untagged()
    name = fleet_name()
    fleet = _spec(tmp_path, ssh_fleet, name, [{"name": "gcp-l4", "provider": "gcp", "project": "test-project", "zone": "us-central1-a",
                   "machine_type": "g2-standard-8", "image": "projects/p/global/images/family/gpu",
                   "accelerators": {"nvidia-l4": 1}, "address": "private", "min": 2, "max": 4,
                   "api_endpoint": gce_fake.endpoint, "gpu": {"type": "L4", "count": 1, "memory_gb": 24}}])
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    try:
        _passes(fleet, conn, transports, tmp_path, 3)
        ours = _gce_ours(gce_fake, name)
        assert len(ours) == 2, ours
        nodes = queries.load_nodes(conn)
        assert sorted(nodes) == sorted(ours) and {n.state for n in nodes.values()} == {NodeState.READY}, nodes
        _passes(fleet, conn, transports, tmp_path, 2)
        assert len(_gce_ours(gce_fake, name)) == 2                 # repeated passes launch nothing more
        sick = sorted(ours)[0]
        ip = ours[sick]["networkInterfaces"][0]["networkIP"]
        write_node(ssh_fleet.sim_root / ip, sick, gpus=1, gpu_type="L4", memory_gb=24, mode="xid79")
        events = _passes(fleet, conn, transports, tmp_path, 4)
        assert ("instance-replaced", sick) in [(e.kind, e.node) for e in events]
        ours = _gce_ours(gce_fake, name)
        assert sick not in ours and len(ours) == 2
        nodes = queries.load_nodes(conn)
        assert {n for n, r in nodes.items() if r.state is NodeState.READY} == set(ours), nodes
        assert harness.alive(stranger) and stranger not in nodes
    finally:
        transports.close()
        conn.close()


def test_a_pending_job_grows_a_pool_and_a_capacity_refusal_falls_over_to_the_next(cloud_env, gce_fake, ssh_fleet,
                                                                                  tmp_path):
    import time as _time
    from gridctl.jobspec import JobSpec
    from gridctl.models import JobRecord, JobState
    _sim_nodes(ssh_fleet, "127.22.1.")
    name = fleet_name()
    pool = {"provider": "gcp", "project": "test-project", "machine_type": "g2-standard-8",
            "image": "projects/p/global/images/family/gpu", "accelerators": {"nvidia-l4": 1}, "address": "private",
            "min": 0, "max": 2, "api_endpoint": gce_fake.endpoint, "gpu": {"type": "L4", "count": 1, "memory_gb": 24}}
    fleet = _spec(tmp_path, ssh_fleet, name, [{**pool, "name": "gcp-a", "zone": "us-central1-a", "fallback": "gcp-b"},
                  {**pool, "name": "gcp-b", "zone": "us-central1-b"}])
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    job = JobSpec.model_validate({"name": "infer", "class": "batch", "gpus": 1, "command": "sleep 600"})
    with write_tx(conn):
        queries.insert_job(conn, JobRecord("infer", job.to_store(), created_at=_time.time(), updated_at=_time.time()))
    gce_fake.fail_next_insert("ZONE_RESOURCE_POOL_EXHAUSTED")
    try:
        events = _passes(fleet, conn, transports, tmp_path, 1)
        capacity = [e for e in events if e.kind == "pool-capacity"]
        assert capacity and "pool gcp-a" in capacity[0].message and "trying pool gcp-b" in capacity[0].message, events
        events += _passes(fleet, conn, transports, tmp_path, 3)
        mine = {n: i["labels"]["gridctl-pool"] for n, i in gce_fake.instances.items()
                if i.get("labels", {}).get("gridctl-fleet") == name}
        assert list(mine.values()) == ["gcp-b"], mine          # one instance, in the pool that had capacity
        job_now = queries.get_job(conn, "infer")
        live = [a for a in queries.load_attempts(conn, jobs=["infer"]) if a.state.live]
        assert job_now.state is JobState.RUNNING and [a.node for a in live] == list(mine), (job_now, live)
    finally:
        _kill_jobs(tmp_path)
        transports.close()
        conn.close()


def test_aws_capacity_refusal_falls_over_to_the_fallback_pool(aws_env, ssh_fleet, tmp_path, monkeypatch):
    """EC2 refuses p5 capacity (the real client parses an InsufficientInstanceCapacity answer);
    the pending job's instance comes from the fallback pool in the same pass."""
    import time as _time
    import boto3
    from cloud_support import ec2_error
    from gridctl.jobspec import JobSpec
    from gridctl.models import JobRecord
    world = aws_env
    _sim_nodes(ssh_fleet, "127.21.1.", gpus=1, gpu_type="H100", memory_gb=80)
    refuse = ec2_error("InsufficientInstanceCapacity", "We currently do not have sufficient p5.48xlarge capacity "
                       "in the Availability Zone you requested (us-east-1a).", 500)

    def p5_only(request, **kw):
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
        return refuse(request, **kw) if "Action=RunInstances" in body and "p5.48xlarge" in body else None

    real_client = boto3.session.Session.client

    def client(self, *args, **kwargs):
        made = real_client(self, *args, **kwargs)
        made.meta.events.register("before-send.ec2.RunInstances", p5_only)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    name = fleet_name()
    base = {"provider": "aws", "region": "us-east-1", "image": world.image, "subnet": world.subnet,
            "security_groups": [world.security_group], "address": "private", "min": 0, "max": 2,
            "endpoint_url": world.endpoint, "gpu": {"type": "H100", "count": 1, "memory_gb": 80}}
    fleet = _spec(tmp_path, ssh_fleet, name, [{**base, "name": "aws-p5", "instance_type": "p5.48xlarge", "fallback": "aws-p4"},
                  {**base, "name": "aws-p4", "instance_type": "p4d.24xlarge"}])
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    job = JobSpec.model_validate({"name": "train", "class": "batch", "gpus": 1, "command": "sleep 600"})
    with write_tx(conn):
        queries.insert_job(conn, JobRecord("train", job.to_store(), created_at=_time.time(), updated_at=_time.time()))
    try:
        with TxCounter(conn) as tx:
            events = _passes(fleet, conn, transports, tmp_path, 1)
        # the facts, the plan (with aws-p5's intent), aws-p4's intent just before asking it, the answers
        assert tx.kinds() == ["read", "write", "write", "write"], tx.transactions
        capacity = [e.message for e in events if e.kind == "pool-capacity"]
        assert capacity and "pool aws-p5: CapacityError" in capacity[0] and "trying pool aws-p4" in capacity[0], events
        assert refuse.calls, "the refusal came from EC2's answer, parsed by the real client"
        events += _passes(fleet, conn, transports, tmp_path, 3)
        ours = _ours(world, name)
        types = sorted(i["InstanceType"] for i in ours.values())
        assert types == ["p4d.24xlarge"], types
        live = [a for a in queries.load_attempts(conn, jobs=["train"]) if a.state.live]
        assert [a.node for a in live] == list(ours)
        assert float(queries.get_meta(conn, "backoff:aws-p5")) > _time.time()   # the refusing pool rests
    finally:
        _kill_jobs(tmp_path)
        transports.close()
        conn.close()


class _Imds:
    """A loopback instance metadata service: IMDSv2 token, then spot/instance-action (404 until set)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        imds = self
        self.notice: str | None = None
        self.asked = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_PUT(self):
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._answer(200 if ok else 400, "token-123" if ok else "")

            def do_GET(self):
                imds.asked += 1
                if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
                    self._answer(401, "")
                elif self.path == "/latest/meta-data/spot/instance-action" and imds.notice:
                    self._answer(200, imds.notice)
                else:
                    self._answer(404, "Not Found")

            def _answer(self, code: int, body: str):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_spot_interruption_notice_drains_the_node_services_first(aws_env, ssh_fleet, tmp_path):
    import time as _time
    from gridctl.jobspec import JobSpec
    from gridctl.models import AttemptState, JobRecord
    world = aws_env
    _sim_nodes(ssh_fleet, "127.21.1.", gpus=2)
    imds = _Imds()
    name = fleet_name()
    base = {"provider": "aws", "region": "us-east-1", "instance_type": "g6.xlarge", "image": world.image,
            "subnet": world.subnet, "security_groups": [world.security_group], "address": "private", "min": 1,
            "max": 1, "endpoint_url": world.endpoint, "gpu": {"type": "L4", "count": 2, "memory_gb": 24}}
    fleet = _spec(tmp_path, ssh_fleet, name, [{**base, "name": "spot", "spot": True, "metadata_endpoint": imds.url},
                  {**base, "name": "ondemand", "metadata_endpoint": imds.url}])
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    try:
        _passes(fleet, conn, transports, tmp_path, 3)
        nodes = queries.load_nodes(conn)
        spot = next(n for n, r in nodes.items() if r.pool == "spot")
        ondemand = next(n for n, r in nodes.items() if r.pool == "ondemand")
        assert dict(nodes[spot].cloud).get("spot") == "yes" and dict(nodes[ondemand].cloud).get("spot") == "no"
        with write_tx(conn):                    # jobs start on the spot node
            queries.set_cordon(conn, ondemand, True, "test", _time.time())
            for job in (JobSpec.model_validate({"name": "svc", "gpus": 1, "command": "sleep 600"}),
                        JobSpec.model_validate({"name": "etl", "class": "batch", "gpus": 1, "command": "sleep 600"})):
                queries.insert_job(conn, JobRecord(job.name, job.to_store(), created_at=_time.time(),
                                                   updated_at=_time.time()))
        _passes(fleet, conn, transports, tmp_path, 2)
        live = {a.job: a for a in queries.load_attempts(conn) if a.state is AttemptState.RUNNING}
        assert {a.node for a in live.values()} == {spot}, live
        with write_tx(conn):
            queries.set_cordon(conn, ondemand, False, "", _time.time())
        assert imds.asked >= 1                  # the spot node's probe asks IMDS every pass
        imds.notice = '{"action": "terminate", "time": "2026-11-27T03:00:00Z"}'
        events = _passes(fleet, conn, transports, tmp_path, 2)
        assert any(e.node == spot and "spot interruption notice" in e.message for e in events), events
        attempts = queries.load_attempts(conn)
        now_live = {a.job: a for a in attempts if a.state is AttemptState.RUNNING}
        assert {a.node for a in now_live.values()} == {ondemand}, attempts
        old = {a.job: a for a in attempts if a.node == spot}
        assert old["svc"].reason.startswith("drained: replaced by attempt")     # the service moved first
        assert old["etl"].outcome == "drain"                                   # batch requeued
        assert queries.load_nodes(conn)[spot].state is not NodeState.READY    # no new work there
    finally:
        _kill_jobs(tmp_path)
        transports.close()
        conn.close()
        imds.close()


def test_reconcile_wait_ready_passes_until_new_instances_are_ready(aws_env, ssh_fleet, tmp_path):
    import subprocess
    import sys
    world = aws_env
    _sim_nodes(ssh_fleet, "127.21.1.")
    name = fleet_name()
    _fleet(tmp_path, world, ssh_fleet, name)
    res = subprocess.run([sys.executable, "-c", "from gridctl.cli import main; main()", "reconcile", "-f",
                          str(tmp_path / "fleet.yaml"), "--wait-ready", "-q"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "2/2 new instances ready" in res.stdout, res.stdout
    conn = connect(tmp_path / "state.db")
    try:
        nodes = queries.load_nodes(conn)
    finally:
        conn.close()
    assert len(nodes) == 2 and {n.state for n in nodes.values()} == {NodeState.READY}
    assert len(_ours(world, name)) == 2


class _GceMetadata:
    """A loopback GCE metadata server: instance/preempted is FALSE until the test says TRUE."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        meta = self
        self.preempted = False

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                ok = (self.headers.get("Metadata-Flavor") == "Google"
                      and self.path == "/computeMetadata/v1/instance/preempted")
                body = (("TRUE" if meta.preempted else "FALSE") if ok else "").encode()
                self.send_response(200 if ok else 403)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_gce_preemption_notice_drains_the_node(cloud_env, gce_fake, ssh_fleet, tmp_path):
    import time as _time
    from gridctl.jobspec import JobSpec
    from gridctl.models import AttemptState, JobRecord
    _sim_nodes(ssh_fleet, "127.22.1.", gpus=2)
    meta = _GceMetadata()
    name = fleet_name()
    base = {"provider": "gcp", "project": "test-project", "zone": "us-central1-a", "machine_type": "g2-standard-8",
            "image": "projects/p/global/images/family/gpu", "accelerators": {"nvidia-l4": 1}, "address": "private",
            "min": 1, "max": 1, "api_endpoint": gce_fake.endpoint, "metadata_endpoint": meta.url,
            "gpu": {"type": "L4", "count": 2, "memory_gb": 24}}
    fleet = _spec(tmp_path, ssh_fleet, name, [{**base, "name": "spot", "spot": True}, {**base, "name": "standard"}])
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    try:
        _passes(fleet, conn, transports, tmp_path, 3)
        nodes = queries.load_nodes(conn)
        spot = next(n for n, r in nodes.items() if r.pool == "spot")
        other = next(n for n, r in nodes.items() if r.pool == "standard")
        with write_tx(conn):
            queries.set_cordon(conn, other, True, "test", _time.time())
            job = JobSpec.model_validate({"name": "svc", "gpus": 1, "command": "sleep 600"})
            queries.insert_job(conn, JobRecord(job.name, job.to_store(), created_at=_time.time(), updated_at=_time.time()))
        _passes(fleet, conn, transports, tmp_path, 2)
        assert [a.node for a in queries.load_attempts(conn) if a.state is AttemptState.RUNNING] == [spot]
        with write_tx(conn):
            queries.set_cordon(conn, other, False, "", _time.time())
        meta.preempted = True
        events = _passes(fleet, conn, transports, tmp_path, 2)
        assert any(e.node == spot and "gce instance/preempted TRUE" in e.message for e in events), events
        assert [a.node for a in queries.load_attempts(conn) if a.state is AttemptState.RUNNING] == [other]
    finally:
        _kill_jobs(tmp_path)
        transports.close()
        conn.close()
        meta.close()
