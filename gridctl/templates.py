"""`gridctl init` templates: a commented fleet.yaml per provider, each valid by `gridctl validate`.
Example hosts are under the reserved `.example` domain: nothing probes them until you edit them."""

from __future__ import annotations

_HEADER = """# gridctl fleet spec. Check it with: gridctl validate -f fleet.yaml
# Reference: README.md "The fleet spec"; every duration takes 500ms, 15s, 2m, 1h.
fleet: {name}                     # lower-case name; also the tag value on cloud resources
# state: ~/.local/state/gridctl/{name}.db   # where gridctl keeps its SQLite store (default shown)
health:
  interval: 15s                   # time between passes in `reconcile --loop` / `watch`
  probe_timeout: 15s              # one probe's whole budget on a node
  unhealthy_after: 2              # failed probes in a row before quarantine (fatal findings: at once)
  recover_after: 3                # good probes in a row before a node is ready again
  max_gpu_temp_c: 90
"""

_SSH = """ssh:                              # defaults for every node; a pool or node may override them
  user: ubuntu
  # key: ~/.ssh/id_ed25519        # else ~/.ssh/config IdentityFile, ssh-agent, ~/.ssh/id_*
  host_key_policy: accept-new     # pin keys on first sight; `strict`: only keys already known
  connect_timeout: 5s
  work_dir: ~/.gridctl            # job attempts live here on each node
pools:
  - name: onprem
    provider: ssh                 # nodes you list; gridctl never creates or deletes them
    gpu: {type: H100, count: 8, memory_gb: 80}
    nodes:
      - {name: gpu-a, host: gpu-a.example}
      - {name: gpu-b, host: gpu-b.example, port: 22}
"""

_LOCAL = """pools:
  - name: sim
    provider: local               # simulated GPU nodes on this machine: try faults with `gridctl chaos`
    count: 3
    gpu: {type: H100, count: 4, memory_gb: 80}
"""

_AWS = """ssh:
  user: ubuntu
  # key: ~/.ssh/gridctl.pem
pools:
  - name: aws-l4
    provider: aws                 # needs: pip install 'gridctl[aws]' and AWS credentials (AWS_PROFILE, ...)
    region: us-east-1
    instance_type: g6.xlarge
    image: ami-0123456789abcdef0  # your GPU AMI
    # subnet: subnet-0123456789abcdef0
    # security_groups: [sg-0123456789abcdef0]
    # key_name: gridctl
    spot: false
    min: 0
    max: 4
    gpu: {type: L4, count: 1, memory_gb: 24}
"""

_GCP = """ssh:
  user: ubuntu
pools:
  - name: gcp-l4
    provider: gcp                 # needs: pip install 'gridctl[gcp]' and application default credentials
    project: my-project
    zone: us-central1-a
    machine_type: g2-standard-8
    image: projects/deeplearning-platform-release/global/images/family/common-cu124
    accelerators: {nvidia-l4: 1}
    min: 0
    max: 4
    gpu: {type: L4, count: 1, memory_gb: 24}
"""

TEMPLATES = {"ssh": _SSH, "local": _LOCAL, "aws": _AWS, "gcp": _GCP}


def render(provider: str, name: str = "my-fleet") -> str:
    if provider not in TEMPLATES:
        raise ValueError(f"unknown provider {provider!r} (known: {', '.join(TEMPLATES)})")
    return _HEADER.format(name=name) + TEMPLATES[provider]
