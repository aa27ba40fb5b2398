"""A simulated GPU fleet behind a real OpenSSH sshd on loopback, for integration tests and benchmarks.

One sshd listens on a free port and answers for every 127.x.y.z address; a fake `nvidia-smi`
(providers/local_bin) learns from $SSH_CONNECTION which node it serves and answers from that node's
directory under the fleet root; the node agent's NVML is the fake pynvml of providers/local_nvml
(GRIDCTL_PYNVML_PATH), driven by the same directory. Node-level faults: refused (a port nothing listens on), blackhole
(iptables DROP on the address; rules removed on stop), no banner (a socket that accepts and never
speaks), host key changed (a wrong key pinned), auth refused (a key the sshd does not accept).
Only processes started here are stopped, by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from providers.local import BIN_DIR, NVML_DIR, write_node

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ip(i: int, net: int = 2) -> str:
    """127.<net>.<hi>.<lo>, skipping .0 and .255 host octets."""
    return f"127.{net}.{i // 250}.{i % 250 + 1}"


class NoBannerServer:
    """Accepts TCP connections and never sends an SSH banner (a stalled sshd)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self._held:
            c.close()


def ssh_packet(payload: bytes) -> bytes:
    """One unencrypted SSH binary packet (RFC 4253 section 6) around payload."""
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack(">IB", len(payload) + pad + 1, pad) + payload + bytes(pad)


def kexinit_not_utf8() -> bytes:
    """A KEXINIT packet whose first algorithm list is not UTF-8: a hostile or corrupted server."""
    lists = [b"\xff\xfe"] + [b"none"] * 9
    body = b"\x14" + bytes(16) + b"".join(struct.pack(">I", len(x)) + x for x in lists) + b"\x00" + bytes(4)
    return ssh_packet(body)


class BadHandshakeServer:
    """Sends a valid SSH banner, then `after` (a malformed packet, or nothing), then closes the connection
    once the client stops sending: a broken or hostile sshd."""

    def __init__(self, after: bytes = b"", host: str = "127.0.0.1"):
        self.after = after
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        # read what the client sends until it gives up, so the close is a FIN, not a reset
        try:
            conn.settimeout(10)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + self.after)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class SshFleet:
    """sshd + node directories + fault switches. Use as a context manager or call stop()."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="gridctl-fleet-"))
        self.sim_root = self.root / "nodes"
        self.sim_root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.client_key = self.root / "client_key"
        self.other_key = self.root / "unauthorized_key"
        self.host_key = self.root / "host_key"
        self.known_hosts = self.root / "known_hosts"
        self.nodes: dict[str, dict] = {}
        self._next = 0
        self._rules: list[list[str]] = []
        self._proc: subprocess.Popen | None = None
        self._no_banner: dict[str, NoBannerServer] = {}
        self._bad_handshake: list[BadHandshakeServer] = []

    # -- lifecycle

    def start(self) -> "SshFleet":
        for key in (self.client_key, self.other_key, self.host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.root / "authorized_keys").write_text(Path(str(self.client_key) + ".pub").read_text())
        os.chmod(self.root / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        config = self.root / "sshd_config"
        path = f"{BIN_DIR}:/usr/local/bin:/usr/bin:/bin"
        config.write_text(f"""
Port {self.port}
ListenAddress 0.0.0.0
HostKey {self.host_key}
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
AllowUsers root@127.0.0.0/8
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
MaxStartups 2000:100:2000
MaxSessions 64
LoginGraceTime 30
LogLevel ERROR
SetEnv SHLVL=1 GRIDCTL_SIM_ROOT={self.sim_root} PATH={path} GRIDCTL_PYNVML_PATH={NVML_DIR}
""")
        self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=open(self.root / "sshd.log", "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        for rule in reversed(self._rules):
            subprocess.run(["iptables", "-D", *rule], capture_output=True)
        self._rules.clear()
        for server in self._no_banner.values():
            server.close()
        for server in self._bad_handshake:
            server.close()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def __enter__(self) -> "SshFleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- nodes

    def add_node(self, name: str, ip: str, *, mode: str = "healthy", gpus: int = 4, **spec) -> dict:
        """A node answered by the shared sshd (or by a fault: pass port=, key=)."""
        write_node(self.sim_root / ip, name, gpus=gpus, mode=mode)
        node = {"name": name, "host": ip, "port": self.port, **spec}
        self.nodes[name] = node
        return node

    def next_ip(self) -> str:
        """A loopback address no other node of this fleet uses."""
        self._next += 1
        return node_ip(self._next)

    def node_dir(self, name: str) -> Path:
        return self.sim_root / self.nodes[name]["host"]

    def set_mode(self, name: str, mode: str, gpus: int = 4) -> None:
        write_node(self.node_dir(name), name, gpus=gpus, mode=mode)

    def refused_port(self) -> int:
        return free_port()

    def no_banner_port(self, ip: str) -> int:
        if ip not in self._no_banner:
            self._no_banner[ip] = NoBannerServer(ip)
        return self._no_banner[ip].port

    def bad_handshake_port(self, ip: str, after: bytes = b"") -> int:
        """A port on ip where a server sends a valid banner, then `after`, then closes."""
        server = BadHandshakeServer(after, ip)
        self._bad_handshake.append(server)
        return server.port

    def blackhole(self, ip: str, port: int | None = None) -> None:
        rule = ["INPUT", "-d", ip, "-p", "tcp", "--dport", str(port or self.port), "-j", "DROP"]
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
        self._rules.append(rule)

    def unblackhole(self, ip: str, port: int | None = None) -> None:
        rule = ["INPUT", "-d", ip, "-p", "tcp", "--dport", str(port or self.port), "-j", "DROP"]
        if rule in self._rules:
            subprocess.run(["iptables", "-D", *rule], capture_output=True)
            self._rules.remove(rule)

    def pin_wrong_host_key(self, ip: str, port: int | None = None) -> None:
        """Pin a different key for this address, as if the node had been reinstalled (or spoofed)."""
        other = Path(str(self.other_key) + ".pub").read_text().split()
        name = f"[{ip}]:{port or self.port}"
        with open(self.known_hosts, "a") as f:
            f.write(f"{name} {other[0]} {other[1]}\n")

    def write_fleet(self, path: Path, *, pool: str = "gpu", gpus: int = 4, health: dict | None = None,
                    nodes: list[str] | None = None, work_dir: str | None = None, **extra) -> Path:
        """`work_dir`: where attempts live on the nodes; all simulated nodes share one home, so
        fleets that run jobs pass one with a `{node}` placeholder."""
        ssh = {"user": "root", "key": str(self.client_key), "host_key_policy": "accept-new",
               "known_hosts": str(self.known_hosts), "connect_timeout": "2s"}
        if work_dir:
            ssh["work_dir"] = work_dir
        spec = {
            "fleet": extra.pop("fleet", "test"),
            "state": str(path.parent / "state.db"),
            "ssh": ssh,
            "health": {"probe_timeout": "4s", **(health or {})},
            "pools": [{"name": pool, "provider": "ssh", "gpu": {"type": "H100", "count": gpus, "memory_gb": 80},
                       "nodes": [self.nodes[n] for n in (nodes or self.nodes)]}],
            **extra,
        }
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path


# tests that add iptables rules; import it from here (tests/cloud has its own conftest module)
requires_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables"),
                                   reason="needs root and iptables (CI runs as root)")
