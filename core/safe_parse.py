"""Parsing text a user wrote (job specs as YAML or JSON) without letting the text choose the cost.

Three ways a few hundred bytes can exhaust a parser, and what we do about each:

- **YAML aliases** (``*a``) repeat a node already built; nested, ten aliases of ten aliases of ... grow
  the *expanded* document exponentially with the text (the "billion laughs"): 745 bytes expanded to
  820 MB. A job spec has no use for them, so an alias is refused when the composer meets it, before
  anything is expanded (``AliasRefused``). Anchors alone are harmless and left alone.
- **Nesting**: PyYAML's composer, ``json.loads`` and every recursive walk of the result recurse once
  per level; a few thousand ``[`` reach Python's recursion limit (``RecursionError``). YAML nesting is
  counted as the composer descends (``MAX_DEPTH``); JSON nesting is measured on the raw text with no
  recursion at all (``json_depth``), before ``json.loads`` runs.
- **Huge integers**: ``int()`` of a 5,000-digit literal raises ``ValueError`` (Python's
  ``sys.get_int_max_str_digits``), and YAML 1.1's base-60 integers (``1:2:3:...``) make PyYAML multiply
  ever larger numbers. Integer literals longer than ``MAX_INT_CHARS`` are refused.

Everything is built on PyYAML's own machinery (a ``SafeLoader`` whose ``compose_node`` checks the next
event) rather than on patterns over the text. Errors are ``CoreError`` naming the field the caller
passes, with the line where the text went wrong. ``hydra_client`` keeps a copy of the YAML part
(it may not import core).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from core.errors import CoreError

# A job spec nests 5 levels (stages.prune.objective.<field>); 32 leaves room and stays far from the
# interpreter's recursion limit (1000 frames) for every recursive walk of the parsed value.
MAX_DEPTH = 32
# Nodes of one YAML document (a spec has ~200); without aliases the text's size bounds this too.
MAX_NODES = 100_000
# Longest integer literal accepted: Python's own limit for int() of a decimal string (sys.get_int_max_str_digits).
MAX_INT_CHARS = 4300

# A refused text's field names at most this many levels (the rest is "…"): enough to find the place.
MAX_PATH_PARTS = 8

ALIAS_CODE = "yaml_alias_refused"
DEPTH_CODE = "nesting_too_deep"
NODES_CODE = "too_many_nodes"
NUMBER_CODE = "number_too_long"


class RefusedYaml(yaml.YAMLError):
    """YAML that is refused before it is expanded; ``code`` says why, ``problem_mark`` where."""

    def __init__(self, code: str, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.code = code
        self.problem = problem
        self.problem_mark = mark

    def __str__(self) -> str:
        where = f" (line {self.problem_mark.line + 1})" if self.problem_mark is not None else ""
        return f"{self.problem}{where}"


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases, nesting deeper than ``MAX_DEPTH`` and more than
    ``MAX_NODES`` nodes as it composes, and integer literals longer than ``MAX_INT_CHARS``."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise RefusedYaml(
                ALIAS_CODE,
                f"YAML aliases (*{event.anchor}) are not accepted: write the value out in full",
                event.start_mark,
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise RefusedYaml(NODES_CODE, f"more than {MAX_NODES} YAML nodes", event.start_mark)
        if self._depth >= MAX_DEPTH and isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            raise RefusedYaml(DEPTH_CODE, f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> int:
        if isinstance(node.value, str) and len(node.value) > MAX_INT_CHARS:
            raise RefusedYaml(
                NUMBER_CODE, f"an integer of {len(node.value)} characters (at most {MAX_INT_CHARS})", node.start_mark
            )
        return int(super().construct_yaml_int(node))


BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)


def _yaml_error(exc: yaml.YAMLError, field: str) -> CoreError:
    if isinstance(exc, RefusedYaml):
        return CoreError(exc.code, field, str(exc))
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return CoreError("spec_unparsable", field, f"not valid YAML: {' '.join(problem.split())}{where}")


def load_yaml(text: str, field: str = "spec") -> Any:
    """``yaml.safe_load`` with the refusals above; any problem is a ``CoreError`` on ``field``."""
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # a SafeLoader subclass: no arbitrary objects
    except (RefusedYaml, ComposerError, ConstructorError, yaml.YAMLError) as exc:
        raise _yaml_error(exc, field) from None


def compose_yaml(text: str) -> yaml.Node | None:
    """The node tree of ``text`` (lines of every field) under the same refusals; raises ``yaml.YAMLError``
    (``RefusedYaml`` for a refusal)."""
    return yaml.compose(text, Loader=BoundedSafeLoader)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- JSON
_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"', re.DOTALL)
_NON_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _open in b"[{":
    _STEP[_open] = 1
for _close in b"]}":
    _STEP[_close] = -1
# an integer literal (not the digits of a float: those parse whatever their length)
_LONG_INT = re.compile(rb"(?<![0-9.])-?[0-9]{%d,}(?![0-9.eE])" % (MAX_INT_CHARS + 1))
_TOKEN = re.compile(rb'"(?:[^"\\]+|\\.)*"|[\[\]{}:,]|-?[0-9][0-9.eE+-]*', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text, without recursion and without parsing it: strings
    are blanked (a bracket inside one does not count), then a running sum over the brackets, in C."""
    if raw.count(b"[") + raw.count(b"{") <= 1:
        return raw.count(b"[") + raw.count(b"{")
    brackets = _STRING.sub(b'""', raw).translate(None, _NON_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _path_at(raw: bytes, stop: Any) -> str:
    """The dotted path (``model.kwargs.a.0``) of the first token for which ``stop(token, depth)`` holds:
    a token walk that keeps the keys of the open containers (used only once a text is refused)."""
    path: list[str] = []  # one entry per open container: its current key or index
    kinds: list[bytes] = []
    pending_key: str | None = None
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if stop(token, len(kinds)):
            break
        if token in (b"[", b"{"):
            kinds.append(token)
            path.append("0" if token == b"[" else "")
        elif token in (b"]", b"}"):
            if kinds:
                kinds.pop()
                path.pop()
        elif token == b",":
            if kinds and kinds[-1] == b"[":
                path[-1] = str(int(path[-1]) + 1)
        elif token == b":":
            if kinds and pending_key is not None:
                path[-1] = pending_key
        elif token.startswith(b'"'):
            try:
                pending_key = json.loads(token)
            except ValueError:
                pending_key = None
            continue
        pending_key = None
    named = [p for p in path if p]
    return ".".join(named[:MAX_PATH_PARTS]) + (".…" if len(named) > MAX_PATH_PARTS else "")


def check_json(raw: bytes | str, field: str | None = None, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (``CoreError``) a JSON text nested deeper than ``max_depth`` or holding an integer literal
    longer than ``MAX_INT_CHARS``, before ``json.loads`` sees it. The error's field is ``field`` followed
    by the path inside the text where the problem starts (``model.kwargs.a.a``)."""
    data = raw.encode() if isinstance(raw, str) else raw

    def where(stop: Any) -> str | None:
        inner = _path_at(data, stop)
        return ".".join(p for p in (field, inner) if p) or None

    depth = json_depth(data)
    if depth > max_depth:
        raise CoreError(
            DEPTH_CODE,
            where(lambda token, level: token in (b"[", b"{") and level >= max_depth),
            f"nested {depth} levels deep; at most {max_depth} are accepted",
        )
    if _LONG_INT.search(_STRING.sub(b'""', data)):
        raise CoreError(
            NUMBER_CODE,
            where(lambda token, level: _LONG_INT.fullmatch(token) is not None),
            f"a number longer than {MAX_INT_CHARS} digits",
        )


def load_json(text: str | bytes, field: str = "spec") -> Any:
    """``json.loads`` after ``check_json``; any problem is a ``CoreError`` on ``field``."""
    check_json(text, field)
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and int() limits
        raise CoreError("spec_unparsable", field, f"not valid JSON: {exc}") from None
