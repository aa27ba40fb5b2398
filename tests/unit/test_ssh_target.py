"""How a node's spec becomes a Target chain: `proxy_jump: a,b` keeps every hop, in OpenSSH's order."""

from __future__ import annotations

from pathlib import Path

from gridctl.reconcile.observe import _ssh_target


def _target(proxy_jump):
    return _ssh_target("n1", "10.0.0.5", port=22, user="ubuntu", key=None, proxy_jump=proxy_jump,
                       connect_timeout=3, policy="accept-new", known_hosts=Path("/tmp/kh"), ssh_config=None)


def _chain(target) -> list[tuple[str, str, int]]:
    hops = []
    while target is not None:
        hops.append((target.user, target.host, target.port))
        target = target.proxy_jump
    return hops


def test_two_hop_jump_keeps_both_hops_node_through_the_last():
    target = _target("alice@bastion.example:2201, relay.example")
    assert _chain(target)[0] == ("ubuntu", "10.0.0.5", 22)
    assert [hop[1:] for hop in _chain(target)[1:]] == [("relay.example", 22), ("bastion.example", 2201)]
    assert target.proxy_jump.proxy_jump.user == "alice"


def test_single_hop_jump_is_unchanged():
    assert [hop[1:] for hop in _chain(_target("root@jump.example:2222"))] == [("10.0.0.5", 22),
                                                                               ("jump.example", 2222)]


def test_proxy_jump_none_means_direct():
    assert _target("none").proxy_jump is None
