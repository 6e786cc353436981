"""Pydantic validation errors as one line a person can act on: the field named once, a typo named.

Every spec model refuses unknown keys (``extra="forbid"``). A misspelled key (``epohcs``) then gives
two errors, and pydantic lists the other one first: ``stages.pretrain.epochs: Field required``. That
message never names the typo. ``first_problem`` puts an unknown key first and says which known field
it most likely meant (``difflib``'s close matches against the model's fields at that place):

    unknown field `epohcs` in `stages.pretrain` — did you mean `epochs`?

and does not count the ``Field required`` the typo caused as a second problem. The CLI
(``core.spec.load_spec``) and the API (``api.errors``) both render errors with it.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from core.errors import names_field, with_field

__all__ = ["clean_message", "first_problem", "known_fields", "names_field", "suggestion", "with_field"]

_PREFIXES = ("Value error, ", "Assertion failed, ")


def clean_message(msg: str) -> str:
    """Pydantic's message without its ``Value error, `` prefix, on one line."""
    for prefix in _PREFIXES:
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return " ".join(msg.split())


def _members(annotation: Any) -> list[Any]:
    """The types an annotation admits: ``Annotated``, ``Optional`` and unions unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _step(annotation: Any, part: Any) -> Any:
    """The annotation one location part below ``annotation`` (a field, a union's tag, an item)."""
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            if isinstance(part, str) and part in member.model_fields:
                return member.model_fields[part].annotation
            tag = member.model_fields.get("type")
            if tag is not None and part in typing.get_args(tag.annotation):  # a discriminated union's tag
                return member
        origin, args = typing.get_origin(member), typing.get_args(member)
        if origin in (list, tuple, set, frozenset) and args and isinstance(part, int):
            return args[0]
        if origin is dict and len(args) == 2:
            return args[1]
    return None


def known_fields(model: type[BaseModel] | None, parent: Sequence[Any]) -> list[str]:
    """The field names the model takes at location ``parent`` (``("stages", "pretrain")``); ``[]``
    when the location does not lead to a model."""
    annotation: Any = model
    for part in parent:
        if annotation is None:
            return []
        annotation = _step(annotation, part)
    names: list[str] = []
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            names += [n for n in member.model_fields if n not in names]
    return names


def suggestion(unknown: str, known: Sequence[str]) -> str | None:
    """The known field ``unknown`` most likely misspells, if any is close."""
    close = difflib.get_close_matches(unknown, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def first_problem(
    errors: Sequence[Any],
    model: type[BaseModel] | None,
    field_of: Callable[[Sequence[Any]], str | None],
    skip: int = 0,
) -> tuple[str | None, str, int]:
    """``(field, message, others)`` of the error to show: the first unknown field if there is one
    (with its suggestion), else the first error; ``others`` counts the rest, less each ``Field
    required`` that a suggested typo explains. ``skip`` leading location parts are not the model's
    (FastAPI's ``body``); ``field_of`` turns a location into the dotted field a user wrote."""
    errors = [dict(e) for e in errors]
    extra = next((e for e in errors if e.get("type") == "extra_forbidden"), None)
    if extra is None:
        first = errors[0]
        return field_of(first.get("loc", ())), clean_message(str(first.get("msg", "invalid value"))), len(errors) - 1
    loc = tuple(extra.get("loc", ()))
    unknown, parent = str(loc[-1]), loc[:-1]
    where = field_of(parent) if parent[skip:] else None
    place = f"in `{where}`" if where else "in the spec"
    known = known_fields(model, parent[skip:])
    meant = suggestion(unknown, known)
    if meant:
        message = f"unknown field `{unknown}` {place} — did you mean `{meant}`?"
    elif known:
        message = f"unknown field `{unknown}` {place}; the fields there: {', '.join(known)}"
    else:
        message = f"unknown field `{unknown}` {place}"
    explained = {(*parent, meant)} if meant else set()
    others = [e for e in errors if e is not extra and not (e.get("type") == "missing" and tuple(e["loc"]) in explained)]
    return field_of(loc), message, len(others)
