"""known_hosts trust (gridctl/hostkeys.py): the file is indexed once, keys are read when a host is looked up,
and the verdicts are paramiko's: a pinned key matches, a changed key never does, a hashed name still counts."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from gridctl.errors import HostKeyChanged, HostKeyUnknown
from gridctl.hostkeys import HostKeyStore


@pytest.fixture(scope="module")
def keys():
    return [paramiko.ECDSAKey.generate() for _ in range(3)]


def _line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def _store(tmp_path: Path, text: str, user_text: str | None = None) -> HostKeyStore:
    ours = tmp_path / "known_hosts"
    ours.write_text(text)
    user = tmp_path / "user_known_hosts"
    if user_text is not None:
        user.write_text(user_text)
    return HostKeyStore(ours, read_only=(user,))


def test_pinned_key_matches_and_a_changed_one_never_does(tmp_path, keys):
    store = _store(tmp_path, "# comment\n\n" + _line("[10.0.0.1]:2222", keys[0]) + _line("10.0.0.2", keys[1]))
    store.check("10.0.0.1", 2222, keys[0], "strict")
    store.check("10.0.0.2", 22, keys[1], "strict")
    with pytest.raises(HostKeyChanged, match=r"\[10.0.0.1\]:2222 presented"):
        store.check("10.0.0.1", 2222, keys[1], "accept-new")
    assert store.key_types("10.0.0.1", 2222) == [keys[0].get_name()]
    assert store.key_types("10.0.0.1", 22) == []


def test_first_line_for_a_name_wins_and_a_comma_list_pins_each_name(tmp_path, keys):
    text = _line("a.example,b.example", keys[0]) + _line("a.example", keys[1])
    store = _store(tmp_path, text)
    store.check("a.example", 22, keys[0], "strict")
    store.check("b.example", 22, keys[0], "strict")
    with pytest.raises(HostKeyChanged):
        store.check("a.example", 22, keys[1], "strict")


def test_the_users_file_is_read_too_and_read_first(tmp_path, keys):
    store = _store(tmp_path, _line("n1", keys[1]), user_text=_line("n1", keys[0]))
    store.check("n1", 22, keys[0], "strict")
    with pytest.raises(HostKeyChanged):
        store.check("n1", 22, keys[1], "strict")


def test_hashed_names_are_matched(tmp_path, keys):
    hashed = paramiko.HostKeys.hash_host("[10.0.0.9]:2200")
    store = _store(tmp_path, _line(hashed, keys[2]))
    store.check("10.0.0.9", 2200, keys[2], "strict")
    with pytest.raises(HostKeyChanged):
        store.check("10.0.0.9", 2200, keys[0], "accept-new")
    with pytest.raises(HostKeyUnknown):
        store.check("10.0.0.10", 2200, keys[2], "strict")


def test_lines_paramiko_skips_are_skipped(tmp_path, keys):
    good = keys[0]
    text = ("short line\n"
            f"n1 sk-ssh-ed25519@openssh.com {good.get_base64()}\n"        # a type paramiko cannot read
            f"n1 {good.get_name()} AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=\n"    # its type, but no key in the blob
            + _line("n2", good))
    store = _store(tmp_path, text)
    assert store.key_types("n1", 22) == []
    with pytest.raises(HostKeyUnknown):
        store.check("n1", 22, good, "strict")
    store.check("n2", 22, good, "strict")


def test_accept_new_pins_once_and_then_holds(tmp_path, keys):
    store = _store(tmp_path, "")
    store.check("new.example", 22, keys[0], "accept-new")
    assert (tmp_path / "known_hosts").read_text() == _line("new.example", keys[0])
    store.check("new.example", 22, keys[0], "accept-new")
    with pytest.raises(HostKeyChanged):
        store.check("new.example", 22, keys[1], "accept-new")
    again = HostKeyStore(tmp_path / "known_hosts", read_only=())
    again.check("new.example", 22, keys[0], "strict")


def test_many_pins_are_indexed_not_compared_pairwise(tmp_path, keys):
    text = "".join(_line(f"[127.2.{i // 250}.{i % 250 + 2}]:40000", keys[i % 2]) for i in range(3000))
    store = _store(tmp_path, text)
    store.check("127.2.11.251", 40000, keys[1], "strict")      # i = 2999
    with pytest.raises(HostKeyChanged):
        store.check("127.2.0.2", 40000, keys[1], "strict")     # i = 0 pinned keys[0]
