"""yamlsrc reads specs with libyaml's parser and PyYAML's composer: the same values, lines and error words as
the pure-Python loader, and no crash on a file nested thousands deep (libyaml's own composer recurses in C)."""

from __future__ import annotations

import pytest
import yaml

from gridctl import yamlsrc
from gridctl.errors import ConfigError
from gridctl.yamlsrc import load_with_lines

SPEC = """\
fleet: f1   # a comment
ssh: {user: root, connect_timeout: 5s}
pools:
  - name: gpu
    provider: ssh
    gpu: {count: 4, type: H100}
    nodes:
      - {name: n1, host: 10.0.0.1, port: 2222}
      - name: n2
        host: "10.0.0.2"
        tags: &t [a, b]
      - name: n3
        host: 10.0.0.3
        tags: *t
health:
  probe_timeout: 15s
  max_gpu_temp_c: 85.5
  unknown: ~
  flags: [yes, no, 0x1F, 1e3, 2001-12-14]
notes: |
  two
  lines
"""


def _pure(path):
    original = yamlsrc._Composer
    yamlsrc._Composer = None
    try:
        return load_with_lines(path)
    finally:
        yamlsrc._Composer = original


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_libyaml_path_reads_what_the_pure_python_loader_reads(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(SPEC)
    data, lines = load_with_lines(path)
    assert (data, lines) == _pure(path)
    assert data["pools"][0]["nodes"][2]["tags"] == ["a", "b"]
    assert lines[("pools", 0, "nodes", 1, "host")] == 10
    assert data["health"]["flags"][:4] == [True, False, 31, "1e3"]


@pytest.mark.parametrize("text", ["a: [1, 2\n", "key: value: x\n", "a: b\n\tc: d\n", "a: \x07\n", "foo: *nope\n",
                                  "a: 1\n---\nb: 2\n"])
def test_errors_are_worded_as_the_pure_python_loader_words_them(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ours:
        load_with_lines(path)
    with pytest.raises(ConfigError) as pure:
        _pure(path)
    assert str(ours.value) == str(pure.value)


def test_a_file_nested_thousands_deep_is_one_error_not_a_crash(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError) as e:
        load_with_lines(path)
    assert "nested deeper" in str(e.value)
