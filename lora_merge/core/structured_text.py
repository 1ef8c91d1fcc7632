"""JSON and YAML values from users' files, within limits: depth, size, whole numbers; JSON lines split at "\\n" only.

Parsers fail in ways no user can read: ``json.loads`` and PyYAML raise a RecursionError on deep nesting and a
ValueError on a whole number of over 4,300 digits ("use sys.set_int_max_str_digits()"), and a value that parses
can still crash a later step (pydantic or ``json.dumps`` recursing through 900 levels, a number past 2⁶³ meeting
torch, YAML aliases that expand a few lines into billions of values). Here each becomes a readable reason:
:func:`json_value` raises :class:`InvalidJSON` (a ValueError with ``msg``, like ``json.JSONDecodeError``), and
:func:`check_structure` refuses what no settings file or data row needs, naming the key.

A JSON-lines file ends a row at "\\n" only (:func:`json_lines`): ``str.splitlines`` also splits at U+2028,
U+2029 and U+0085, which a valid JSON string may hold raw, and would cut a valid row in two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lora_merge.core.errors import LoraMergeError

MAX_DEPTH = 64  # lists and mappings inside each other; a settings file or a data row needs a handful
MAX_VALUES = 1_000_000  # values in one file's settings or one row, counted with YAML aliases expanded
INT_BOUND = 2**63


class InvalidJSON(ValueError):
    """A JSON text that cannot be used; ``msg`` says why in a few words (as ``json.JSONDecodeError.msg`` does),
    ``lineno`` where the parser stopped, when it says."""

    def __init__(self, msg: str, lineno: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.lineno = lineno


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number from 1, line)`` for every line of a JSON-lines text that is not blank, split at "\\n" only."""
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield n, line


def json_value(text: str | bytes) -> Any:
    """``json.loads(text)``, checked by :func:`check_structure`; any failure an :class:`InvalidJSON`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidJSON(e.msg, e.lineno) from None
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # a whole number of over 4,300 digits; bytes that are not UTF-8
        raise InvalidJSON("a number too long to read" if "integer string conversion" in str(e) else str(e)) from None
    try:
        check_structure(value, "")
    except LoraMergeError as e:
        raise InvalidJSON(str(e).removeprefix(": ")) from None
    return value


def check_structure(value: Any, where: str, bound_ints: bool = False) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUES` values once aliases are expanded,
    a list or mapping that contains itself and, with ``bound_ints``, whole numbers beyond ±2⁶³: a LoraMergeError
    ``WHERE: KEY: reason``. No recursion, so a deep value cannot crash the check itself."""
    sizes: dict[int, int] = {}  # id of a finished list or mapping → its value count, aliases expanded
    open_ids: set[int] = set()  # lists and mappings on the current path
    stack: list[tuple[Any, str, int, bool]] = [(value, "", 0, False)]
    while stack:
        node, path, depth, finished = stack.pop()
        key = path if len(path) <= 60 else f"{path[:28]}…{path[-28:]}"  # as shown in a message
        if isinstance(node, (dict, list)):
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            if finished:
                open_ids.discard(id(node))
                sizes[id(node)] = 1 + sum(sizes.get(id(v), 1) for _, v in items)
                if sizes[id(node)] > MAX_VALUES:
                    raise LoraMergeError(f"{where}: {key or '(root)'}: over {MAX_VALUES:,} values (YAML aliases "
                                         "expanded); far more than settings or a data row hold")
                continue
            if id(node) in open_ids:
                raise LoraMergeError(f"{where}: {key or '(root)'}: contains itself (a YAML alias inside its anchor)")
            if id(node) in sizes:
                continue  # an alias of a value already checked
            if depth >= MAX_DEPTH:
                raise LoraMergeError(f"{where}: {key or '(root)'}: nested deeper than {MAX_DEPTH} levels")
            open_ids.add(id(node))
            stack.append((node, path, depth, True))
            for k, v in items:
                if bound_ints:
                    _check_number(k, key or "(root)", where)
                stack.append((v, f"{path}.{k}" if path else str(k), depth + 1, False))
        elif bound_ints:
            _check_number(node, key or "(root)", where)


def _check_number(value: Any, key: str, where: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_BOUND < value < INT_BOUND:
        raise LoraMergeError(f"{where}: {key}: a whole number too large (over 2⁶³ in size)")
