"""The one way a YAML settings file becomes a typed value: read, parse, check it is a mapping, validate.

Merge recipes, training recipes and the studies' configs all load through :func:`load_yaml_model`, so every
mistake reads the same: one :class:`LoraMergeError` line naming the file and each bad key by its dotted path
(``adapters.0.wieght: unknown key (known keys of adapters.0: pack, weight, …)``). A loader with its own steps
(a recipe's ``extends:``, command-line overrides) passes them as ``prepare``, run between parsing and validation.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import MAX_DEPTH, check_structure

Model = TypeVar("Model", bound=BaseModel)
Prepare = Callable[[dict[str, Any]], dict[str, Any]]

MAX_PROBLEMS = 6  # one readable line: the rest are usually the same mistake repeated
_KINDS = {"list": "a list", "str": "a string", "int": "a number", "float": "a number", "bool": "true/false"}


def known_keys(known: Iterable[str], parent: str = "") -> str:
    """The one wording of the keys allowed at ``parent`` (the top level when empty), shown beside an unknown key."""
    where = f" of {parent}" if parent else ""
    return f"known keys{where}: {', '.join(known)}"


def read_yaml_mapping(path: str | os.PathLike, what: str, known: Iterable[str] = ()) -> dict[str, Any]:
    """The key/value mapping a YAML file holds (an empty file holds none); ``what`` names the file in errors.

    ``known``, when given, is listed if the file holds something other than a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise LoraMergeError(f"{what} {path} is a folder, not a YAML file")
    if not path.is_file():
        raise LoraMergeError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LoraMergeError(f"{what} {path}: not UTF-8 text, so not a YAML file") from None
    except OSError as e:
        raise LoraMergeError(f"{what} {path}: cannot be read ({e.strerror})") from None
    raw = parse_yaml(text, f"{what} {path}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        kind = _KINDS.get(type(raw).__name__, type(raw).__name__)
        hint = f" ({known_keys(known)})" if known else ""
        raise LoraMergeError(f"{what} {path}: must be a mapping of key: value, not {kind}{hint}")
    return raw


class _TooDeep(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stopping at the first ``[`` or ``{`` nested deeper than :data:`MAX_DEPTH`: its scanner
    rechecks every open level at each token, so 20,000 ``[`` would cost seconds before the RecursionError."""

    def fetch_flow_collection_start(self, TokenClass):  # noqa: N803 - PyYAML's own signature
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep
        super().fetch_flow_collection_start(TokenClass)


def parse_yaml(text: str, where: str) -> Any:
    """The value a YAML text holds, checked by :func:`check_structure`; every failure a LoraMergeError that starts
    with ``where`` (never a RecursionError, a ValueError from a date or a 5,000-digit number, …)."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: no python/ tags
    except yaml.YAMLError as e:
        raise LoraMergeError(f"{where}: not valid YAML ({e})") from None
    except (RecursionError, _TooDeep):
        raise LoraMergeError(f"{where}: nested too deeply to be a settings file") from None
    except (ValueError, OverflowError, TypeError) as e:  # a number of over 4,300 digits, a date like 2024-02-30
        reason = "a number too long to read" if "integer string conversion" in str(e) else str(e)
        raise LoraMergeError(f"{where}: not valid YAML ({reason})") from None
    check_structure(raw, where, bound_ints=True)  # a number past 2⁶³ would overflow where it meets torch or C
    return raw


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _without_none(tp: Any) -> Any:
    """``X | None`` → ``X`` (pydantic reports no union member for it); any other type unchanged."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _inner(tp: Any, seg: str | int) -> Any:
    """The type found under ``seg`` inside a value of type ``tp`` (None where it is not known)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(seg))
        return field.annotation if field else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _key_path(model_cls: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str, Any]:
    """The dotted key an error's location names, and the type holding its last part.

    Pydantic adds the name of each member it tried in a union (``target_modules.list[str]``); those are no keys
    a user wrote, so the key stops at the union's field.
    """
    parts: list[str] = []
    tp: Any = model_cls
    parent: Any = None
    for seg in loc:
        tp = _without_none(tp)
        if _is_union(tp):
            break
        parts.append(str(seg))
        parent, tp = tp, _inner(tp, seg)
    return ".".join(parts), parent


def describe(e: ValidationError, model_cls: type[BaseModel], where: str) -> LoraMergeError:
    """A pydantic error as one line naming each bad key: ``WHERE: seed: Input should be …; methd: unknown key``.

    Unknown keys end the line with the keys allowed beside them; a key a union refused gives each member's
    reason once.
    """
    problems: dict[str, list[str]] = {}
    hints: dict[str, str] = {}  # parent key → its known keys, for the unknown keys shown
    for err in e.errors():
        key, parent = _key_path(model_cls, err["loc"])
        key = key or "(root)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if isinstance(parent, type) and issubclass(parent, BaseModel) and len(problems) < MAX_PROBLEMS:
                head = key.rpartition(".")[0]
                hints.setdefault(head, known_keys(parent.model_fields, head))
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if msg not in problems.setdefault(key, []):
            problems[key].append(msg)
    shown = [f"{key}: {' or '.join(msgs)}" for key, msgs in list(problems.items())[:MAX_PROBLEMS]]
    more = f"; and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
    hint = f" ({'; '.join(hints.values())})" if hints else ""
    return LoraMergeError(f"{where}: {'; '.join(shown)}{more}{hint}")


def validate_model(values: dict[str, Any], model_cls: type[Model], where: str) -> Model:
    """``values`` validated by ``model_cls``; a mistake is one LoraMergeError that starts with ``where``."""
    try:
        return model_cls.model_validate(values)
    except ValidationError as e:
        raise describe(e, model_cls, where) from None


def load_yaml_model(path: str | os.PathLike, model_cls: type[Model], what: str,
                    prepare: Prepare | None = None) -> Model:
    """The YAML file at ``path`` validated by ``model_cls``; ``what`` ("merge recipe") names it in every error.

    ``prepare`` turns the file's mapping into the values validated (overrides, an ``extends:`` chain); any
    mistake — missing file, bad YAML, not a mapping, an unknown or bad key — is a LoraMergeError naming the file.
    """
    raw = read_yaml_mapping(path, what, model_cls.model_fields)
    values = prepare(raw) if prepare is not None else raw
    return validate_model(values, model_cls, f"{what} {Path(path)}")
