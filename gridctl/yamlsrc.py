"""YAML with line numbers: used by spec.py so every error can name file, line and field.

Called by spec.load_fleet (and later job specs). Pure apart from reading the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Path_ = tuple  # a location: ("pools", 1, "provider")

MAX_SPEC_BYTES = 1024 * 1024      # a fleet or job spec is a few KiB; refuse anything near this
MAX_VALUES = 100_000              # values after aliases are expanded: refuses alias bombs
MAX_DEPTH = 64                    # nesting of mappings and lists


def load_with_lines(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML into plain Python objects plus {location: 1-based line}. Raises ConfigError."""
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB: not a spec gridctl will read")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        root = _compose(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels: not a spec gridctl will read") from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise ConfigError(f"{path}:{line}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if root is None:
        raise ConfigError(f"{path}: file is empty")
    lines: dict[Path_, int] = {}
    problems: list[str] = []
    budget = [MAX_VALUES]
    value = _build(root, (), lines, problems, path, set(), budget)
    if problems:
        raise ConfigError(problems)
    return value, lines


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree, with libyaml's scanner and parser where PyYAML has it (a 500-node fleet
    spec parses several times faster) and PyYAML's own composer and resolver either way. A file libyaml
    refuses is read again by the pure-Python loader, so every error says what it always said."""
    if _Composer is None:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    loader = _Composer(text)
    try:
        return loader.get_single_node()
    except yaml.YAMLError:
        pass
    finally:
        loader.dispose()
    return yaml.compose(text, Loader=yaml.SafeLoader)


if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class _Composer(yaml.composer.Composer, CParser, yaml.resolver.Resolver):
        """libyaml's events (C), PyYAML's composer (Python). Not yaml.CSafeLoader: libyaml's own composer
        recurses in C without a bound and crashes the interpreter on a file nested a few thousand deep;
        this one recurses in Python, so such a file is a RecursionError, as with the pure-Python loader."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:
    _Composer = None


def _build(node: yaml.Node, where: Path_, lines: dict, problems: list, path: Path, active: set,
           budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"{path}: over {MAX_VALUES} values once its aliases are expanded (an alias bomb?): "
                          "not a spec gridctl will read")
    if len(where) > MAX_DEPTH:
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
    lines[where] = node.start_mark.line + 1
    if id(node) in active:
        problems.append(f"{path}:{node.start_mark.line + 1} {format_loc(where)}: an alias refers to itself")
        return None
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        active = active | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if not isinstance(key, (str, int)):
                problems.append(f"{path}:{key_node.start_mark.line + 1}: mapping keys must be plain names")
                continue
            if key in out:
                problems.append(f"{path}:{key_node.start_mark.line + 1} {format_loc(where + (key,))}: duplicate key")
                continue
            out[key] = _build(value_node, where + (key,), lines, problems, path, active, budget)
            lines[where + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, where + (i,), lines, problems, path, active, budget)
                for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return node  # a non-scalar key; caller reports it
    return _CONSTRUCTOR.construct_object(node, deep=True)


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def format_loc(loc: tuple) -> str:
    """("pools", 1, "provider") -> "pools[1].provider"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def line_of(lines: dict[Path_, int], loc: tuple) -> int | None:
    """The line of the deepest known prefix of loc."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
