"""Strings from packs shown safely: control characters escaped before they reach a terminal or a card.

A manifest's name or description is written by whoever made the pack. Raw, an
``ESC [ … m`` sequence recolours or clears the user's terminal, a carriage
return overwrites a line, a bidi override reorders what a card appears to say.
:func:`printable` turns every such character into a visible ``\\xNN`` /
``\\uNNNN`` escape; ordinary text (accents, CJK, emoji) is left as it is.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the invisible format characters that reorder or split text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, keep: str = "") -> str:
    """``str(value)`` with control and bidi characters escaped (those in ``keep``, e.g. "\\n", are kept)."""
    text = str(value)
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)
    return _UNSAFE.sub(_escape, text)
