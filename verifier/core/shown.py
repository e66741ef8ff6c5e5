"""Text railproof did not write (a tenant's memo, an incident id, a receiver's answer), made safe
to show a person: every character that does not print is written as its escape.

SECURITY: control characters move a terminal's cursor or retitle its window; the
bidirectional overrides (U+202E) reverse what follows; zero-width and other invisible
characters (U+200B, U+2060, U+FEFF, a soft hyphen) make one id print exactly as another. What
`str.isprintable` refuses (Unicode's Other and Separator categories) is all of these; the
spaces of other scripts (U+3000, a no-break space) are left as they are, being seen as
spaces."""

from __future__ import annotations

import unicodedata


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


def printable(value: object, keep: str = "") -> str:
    """`value` as text with every character that does not print (but those in `keep`)
    written as its escape: `\\x1b`, `\\n`, `\\u202e`, `\\u200b`."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if _shows(c) or c in keep else _escape(c) for c in text)


def _shows(c: str) -> bool:
    return c.isprintable() or unicodedata.category(c) == "Zs"


# Characters nobody can read or type back: controls (Cc: line breaks, tabs, escapes), format
# characters (Cf: zero-width, BOM, direction overrides, soft hyphen) and the line and
# paragraph separators (Zl, Zp).
_UNREADABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def unreadable(text: str) -> bool:
    """True when `text` holds a control, format, or line or paragraph separator character:
    an id holding one cannot be typed back to search for it (the CLI and the audit filter
    refuse control characters) and may print exactly as another."""
    return any(unicodedata.category(c) in _UNREADABLE for c in text)


def blank(text: str | None) -> bool:
    """True when nothing readable is left of `text` once those characters and whitespace
    are removed."""
    return not "".join(c for c in text or "" if unicodedata.category(c) not in _UNREADABLE).strip()
