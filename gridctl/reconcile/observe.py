"""Gather facts for a pass: what the providers list (inventory) and what every node's probe says.

Called by reconcile_once and by `gridctl probe` (which only reads). Network I/O happens here and
nowhere near a database transaction.
"""

from __future__ import annotations

import getpass
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import providers
from providers.base import Instance, InstanceState, ProviderError

from ..connect import CONNECT_WINDOW, connect_many, raise_fd_limit
from ..errors import AuthFailed, HostKeyChanged, HostKeyUnknown, ProbeTimeout, TransportError, Unreachable
from ..models import Contact, Expectation, Inventory, InventoryNode, LogPosition, Observation, Target
from ..probe import ProbeBudget, probe_request
from ..spec import Fleet, SshSettings
from ..localtransport import LocalTransport
from ..transport import SshTransport

DEFAULT_KNOWN_HOSTS = Path("~/.config/gridctl/known_hosts")
DEFAULT_WORK_DIR = "~/.gridctl"
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
MAX_JUMPS = 8          # hops in one chain, counting those ~/.ssh/config adds: stops a ProxyJump loop


class Transports:
    """The transports of one process; kept across passes in --loop so SSH connections are reused."""

    def __init__(self, keep: bool = True, agent: bool = False) -> None:
        """keep=False (one-shot commands): close each SSH connection once its probe is done.
        agent=True: probe through resident node agents (gridctl/agent), the sh probe where none starts;
        the loop sets `agents.wake` to be woken by pushed events."""
        self.ssh = SshTransport(keep=keep)
        self.local = LocalTransport()
        self.agents = None
        if agent:
            from ..agent.sessions import AgentSessions
            self.agents = AgentSessions()

    def for_target(self, target: Target):
        return self.local if target.local_dir is not None else self.ssh

    def close(self) -> None:
        if self.agents is not None:
            self.agents.close()
        self.ssh.close()


def take_inventory(fleet: Fleet, state_dir: Path) -> Inventory:
    """Ask every pool's provider what exists. A pool that fails is reported, not fatal."""
    ssh_config = _load_ssh_config()
    nodes, failed, listed, features = [], {}, {}, {}
    for pool in fleet.pools:
        try:
            adapter = providers.get(pool.provider)
            instances = adapter(fleet.fleet, pool, state_dir).list_instances()
        except ProviderError as e:
            failed[pool.name] = str(e)
            continue
        listed[pool.name] = instances
        features[pool.name] = frozenset(adapter.features)
        expect = Expectation(gpus=pool.gpu.count, max_gpu_temp_c=fleet.health.max_gpu_temp_c,
                             min_disk_free_pct=fleet.health.min_disk_free_pct,
                             probe_timeout_s=fleet.health.probe_timeout)
        spec_nodes = {n.name: n for n in getattr(pool, "nodes", [])}
        for inst in sorted(instances.values(), key=lambda i: i.id):
            if inst.state is not InstanceState.RUNNING:
                continue
            target = _target(inst, spec_nodes.get(inst.id), pool.ssh, fleet.ssh, ssh_config)
            work_dir = (pool.ssh.work_dir or fleet.ssh.work_dir or DEFAULT_WORK_DIR).replace("{node}", inst.id)
            if inst.local_dir is not None:
                work_dir = str(inst.local_dir / "work")   # each simulated node keeps its own attempts
            metadata = getattr(pool, "metadata_endpoint", None) if inst.spot else None
            if metadata and pool.provider == "gcp":
                metadata = "gce:" + metadata
            nodes.append(InventoryNode(inst.id, pool.name, pool.provider, target, expect, work_dir, _cloud(inst),
                                       metadata))
    return Inventory(nodes, failed, listed, features)


def _cloud(inst: Instance) -> tuple[tuple[str, str], ...]:
    facts = {"instance_type": inst.instance_type, "zone": inst.zone,
             "spot": ("yes" if inst.spot else "no") if inst.instance_type else None,
             "launched_at": f"{inst.launched_at:.0f}" if inst.launched_at else None}
    return tuple((k, v) for k, v in facts.items() if v)


def _load_ssh_config():
    import paramiko
    path = Path(os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return None
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception:  # a config paramiko cannot read must not stop the sweep; OpenSSH would say why
        return None


def _target(inst: Instance, node, pool_ssh: SshSettings, fleet_ssh: SshSettings, ssh_config) -> Target:
    def pick(attr: str, own=None):
        for value in (own, getattr(pool_ssh, attr), getattr(fleet_ssh, attr)):
            if value is not None:
                return value
        return None

    if inst.local_dir is not None:
        from providers.local import sim_env
        return Target(name=inst.id, host="local", local_dir=inst.local_dir, local_env=sim_env(inst.local_dir))
    return _ssh_target(inst.id, inst.host, port=pick("port", inst.port), user=pick("user", inst.user),
                       key=pick("key", getattr(node, "key", None)),
                       proxy_jump=pick("proxy_jump", getattr(node, "proxy_jump", None)),
                       connect_timeout=pick("connect_timeout") or 5.0,
                       policy=pick("host_key_policy") or "accept-new",
                       known_hosts=pick("known_hosts") or DEFAULT_KNOWN_HOSTS, ssh_config=ssh_config)


def _ssh_target(name: str, host: str, *, port, user, key, proxy_jump, connect_timeout, policy, known_hosts,
                ssh_config, depth: int = 0) -> Target:
    """Spec values first, then ~/.ssh/config for the host alias, then OpenSSH's defaults."""
    conf = ssh_config.lookup(host) if ssh_config is not None else {}
    keys = [Path(key)] if key else [Path(p) for p in conf.get("identityfile", [])]
    keys += [Path(p) for p in DEFAULT_IDENTITIES if Path(p) not in keys]
    jump = proxy_jump or conf.get("proxyjump")
    jump_target = None
    if jump and jump.lower() != "none" and depth < MAX_JUMPS:
        # OpenSSH: `ProxyJump a,b` reaches the node through b, and b through a; the first hop's own
        # ProxyJump (from ~/.ssh/config) applies only to it
        *earlier, hop = [h.strip() for h in jump.split(",")]
        juser, _, jhost = hop.rpartition("@")
        jhost, _, jport = jhost.partition(":")
        jump_target = _ssh_target(f"{name}-jump{depth + 1}", jhost, port=int(jport) if jport else None,
                                  user=juser or None, key=key, proxy_jump=",".join(earlier) or None,
                                  connect_timeout=connect_timeout, policy=policy, known_hosts=known_hosts,
                                  ssh_config=ssh_config, depth=depth + 1)
    return Target(name=name, host=conf.get("hostname", host), port=int(port or conf.get("port", 22)),
                  user=user or conf.get("user") or getpass.getuser(), keys=tuple(keys), proxy_jump=jump_target,
                  connect_timeout=float(connect_timeout), host_key_policy=policy, known_hosts=Path(known_hosts))


def sweep(nodes: list[InventoryNode], transports: Transports, *, probe_timeout: float, concurrency: int,
          positions: dict[str, LogPosition] | None = None, kill: dict[str, tuple[str, ...]] | None = None,
          key: bytes | None = None, connect_window: int = CONNECT_WINDOW) -> dict[str, Observation]:
    """Called by reconcile_once and `gridctl probe`: probe every node once, concurrently; one Observation
    per node, always, whatever a node's connection raises. Dead nodes wait in the connector, not in worker
    threads, so wall time stays about one connect timeout plus one probe timeout (one more connect timeout
    per `connect_window` dead nodes beyond the first window). An endpoint shared by many nodes sees at most
    `concurrency` of our sessions starting or running at once, as with a plain thread pool. `positions`:
    where each node's kernel-log read starts; `key`: the store's attempt key (needed with kill lists)."""
    positions = positions or {}
    kill = kill or {}
    budget = ProbeBudget(probe_timeout)
    started = time.time()
    by_name = {n.name: n for n in nodes}
    results: dict[str, Observation] = {}
    raise_fd_limit(len(nodes) + 256)
    if transports.agents is not None:
        nodes = _on_live_agents(nodes, transports, budget, positions, kill, key, started, results, concurrency)
    fresh = {n.name for n in nodes if transports.for_target(n.target).needs_socket(n.target)}
    in_use = _InUse()

    def probe_with(node: InventoryNode, sock) -> Observation:
        try:
            return _probe_one(node, transports, budget, positions.get(node.name), started, sock,
                              kill.get(node.name, ()), key)
        finally:
            if sock is not None:
                in_use.done()

    def probe(node: InventoryNode, sock) -> Future:
        if sock is not None:
            in_use.given()
        return pool.submit(probe_with, node, sock)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gridctl-probe") as pool:
        futures = [probe(n, None) for n in nodes if n.name not in fresh]
        try:
            for name, sock in connect_many(((n.name, n.target.host, n.target.port, n.target.connect_timeout)
                                            for n in nodes if n.name in fresh),
                                           window=connect_window, held=in_use.count, answer_window=concurrency):
                if isinstance(sock, Unreachable):
                    results[name] = _failed(name, Contact.UNREACHABLE, str(sock), started)
                else:
                    futures.append(probe(by_name[name], sock))
        except Exception as e:  # the connector itself broke (no file descriptors left...): its nodes still get a row
            for name in fresh - results.keys():
                results[name] = _failed(name, Contact.UNREACHABLE, f"not connected: {type(e).__name__}: {e}",
                                        started)
        for fut in futures:
            obs = fut.result()
            results[obs.node] = obs
    return results


class _InUse:
    """Connected sockets handed to the worker pool whose probe has not finished: sessions the endpoint is
    serving for us (waiting for a worker, in the SSH handshake, or running the probe). They count in the
    connect window, so a shared endpoint sees no more of our sessions than a plain thread pool would give it."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def given(self) -> None:
        with self._lock:
            self._count += 1

    def done(self) -> None:
        with self._lock:
            self._count -= 1

    def count(self) -> int:
        return self._count


def _failed(name: str, contact: Contact, detail: str, started: float, path: str = "sh") -> Observation:
    return Observation(node=name, contact=contact, started_at=started, duration_s=time.time() - started,
                       detail=detail, probe_path=path)


def _ask_agent(node: InventoryNode, agents, transport, probe, budget: ProbeBudget, sock):
    """The node's probe on its resident agent session (started on first use); see agent/sessions.py."""
    from ..agent.session import LOADER, NET_SILENT_S
    used = []

    def open_stream():
        first = not used
        used.append(True)
        return transport.open_stream(node.target, LOADER, sock=sock if first else None, silent_s=NET_SILENT_S)
    return agents.probe(node.name, open_stream, probe.agent_args, budget.total_s), bool(used)


def _on_live_agents(nodes: list[InventoryNode], transports: Transports, budget: ProbeBudget,
                    positions: dict[str, LogPosition], kill: dict[str, tuple[str, ...]], key: bytes | None,
                    started: float, results: dict[str, Observation], concurrency: int) -> list[InventoryNode]:
    """The pass's probes of nodes whose resident sessions are up, asked from this thread together
    (AgentSessions.ask_live: no worker thread per node, at most `concurrency` in flight); their
    observations go into results. Returns the nodes left for the per-node path (no session yet, or an
    agent that ended meanwhile)."""
    agents = transports.agents
    probes = {}
    for node in nodes:
        why = agents.take_lost(node.name)
        if why is not None:
            # the kernel ended its connection (no answer to keepalives): silent this pass; connecting again
            # at once would only wait out a connect timeout, the next pass does
            transports.for_target(node.target).forget(node.target)
            results[node.name] = _failed(node.name, Contact.UNREACHABLE, why, started, "agent")
        elif agents.live(node.name):
            probes[node.name] = probe_request(budget, node.work_dir, kill=kill.get(node.name, ()), key=key,
                                              position=positions.get(node.name), metadata=node.metadata)
    answers = agents.ask_live({name: (p.agent_args, budget.total_s) for name, p in probes.items()}, concurrency)
    for node in nodes:
        answer = answers.get(node.name)
        if answer is not None:
            results[node.name] = _from_agent(node, probes[node.name], answer, started, answer.took_s,
                                             transports.for_target(node.target))
    return [n for n in nodes if n.name not in results]


def _from_agent(node: InventoryNode, probe, answer, started: float, took_s: float, transport) -> Observation | None:
    """The observation a settled agent answer gives; None when the node needs the sh probe."""
    if answer.kind == "text":
        return replace(probe.parse(node.name, answer.text, started_at=started, duration_s=took_s), probe_path="agent")
    if answer.kind == "silent":
        transport.forget(node.target)
        return _failed(node.name, Contact.UNREACHABLE, answer.problem, started, "agent")
    if answer.kind == "hung":
        return _failed(node.name, Contact.HUNG, answer.problem, started, "agent")
    return None


def _probe_one(node: InventoryNode, transports: Transports, budget: ProbeBudget, position: LogPosition | None,
               started: float, sock, kill: tuple[str, ...] = (), key: bytes | None = None) -> Observation:
    probe = probe_request(budget, node.work_dir, kill=kill, key=key, position=position, metadata=node.metadata)
    t0 = time.monotonic()
    transport = transports.for_target(node.target)
    note = None
    try:
        if transports.agents is not None:
            answer, used = _ask_agent(node, transports.agents, transport, probe, budget, sock)
            sock = None if used else sock
            obs = _from_agent(node, probe, answer, started, time.monotonic() - t0, transport)
            if obs is not None:
                return obs
            note = answer.problem
        res = transport.run(node.target, probe.command, probe.stdin, budget.total_s, sock=sock)
    except Unreachable as e:
        return _failed(node.name, Contact.UNREACHABLE, str(e), started)
    except AuthFailed as e:
        return _failed(node.name, Contact.AUTH, str(e), started)
    except HostKeyUnknown as e:
        return _failed(node.name, Contact.HOST_KEY_UNKNOWN, str(e), started)
    except HostKeyChanged as e:
        return _failed(node.name, Contact.HOST_KEY, str(e), started)
    except ProbeTimeout as e:
        return _failed(node.name, Contact.HUNG, str(e), started)
    except TransportError as e:
        return _failed(node.name, Contact.UNREACHABLE, str(e), started)
    except Exception as e:  # an error no layer classified is still this node's, never the sweep's
        words = (str(e).strip().splitlines() or [""])[0][:200]
        return _failed(node.name, Contact.UNREACHABLE, f"connection failed: {type(e).__name__}: {words}", started)
    obs = probe.parse(node.name, res.stdout, started_at=started, duration_s=time.monotonic() - t0)
    problems = list(obs.parse_problems) + ([note] if note else [])
    if res.truncated:
        problems.append("probe output over 4 MiB: truncated")
    if not obs.complete and res.stderr.strip():
        problems.append(f"exit {res.exit_code}: {res.stderr.decode('utf-8', 'replace').strip().splitlines()[-1][:200]}")
    return replace(obs, parse_problems=tuple(problems))
