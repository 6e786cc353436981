"""Reading a job spec file safely: YAML without aliases, with bounded nesting and integer literals.

A small copy of ``core/safe_parse.py``'s YAML loader (see there for why each limit exists): the client
may not import ``core`` (it installs without torch, and the import contract forbids it), yet it reads
the same user-written spec files and must not expand an alias bomb or recurse past the interpreter's
limit before the service ever sees the spec. The limits are the service's, so a file refused here
would be refused there too.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from hydra_client.errors import HydraError

MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_INT_CHARS = 4300


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        line = f" (line {mark.line + 1})" if mark is not None else ""
        super().__init__(problem + line)


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing aliases, deep nesting, too many nodes and huge integers as it composes."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"YAML aliases (*{event.anchor}) are not accepted: write the value out", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} YAML nodes", event.start_mark)
        if self._depth >= MAX_DEPTH and isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> int:
        if isinstance(node.value, str) and len(node.value) > MAX_INT_CHARS:
            raise _Refused(f"an integer of {len(node.value)} characters", node.start_mark)
        return int(super().construct_yaml_int(node))


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def _where(exc: BaseException) -> str:
    """`` at line L, column C`` of a YAML or JSON parse error, when it says."""
    if isinstance(exc, json.JSONDecodeError):
        return f" at line {exc.lineno}, column {exc.colno}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, _Refused):
        return str(exc)
    problem = getattr(exc, "problem", None)  # a MarkedYAMLError's own words, without its source excerpt
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if problem and context else (problem or str(exc))
    return " ".join(text.split())


def parse_spec_text(text: str, source: str, as_json: bool) -> Any:
    """The parsed spec text; ``HydraError("invalid_spec", ...)`` naming ``source`` (and the line and
    column of a syntax error) on one line for anything refused."""
    try:
        if as_json:
            # json.loads recurses per level and int() has a digit limit: both are errors here, not crashes
            return json.loads(text)
        return yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass: no arbitrary objects
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        kind = "JSON" if as_json else "YAML"
        where = "" if isinstance(exc, _Refused) else _where(exc)
        raise HydraError(
            "invalid_spec", f"{source} is not an acceptable {kind} job spec{where}: {_problem(exc)}"
        ) from None
