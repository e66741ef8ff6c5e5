"""How the CLI prints text it did not write: values stored by tenants (webhook URLs, memos), by
a tenant's webhook receiver (a delivery's last error), by other staff (reasons), or sent back
by the API.

SECURITY: such text reaches an operator's terminal. Rich reads `[...]` in a plain string as
markup (a tenant's URL holding `[/x]` crashed the table, `[conceal]` hid what is stored) and
passes ESC through, so a receiver's error body could clear the screen, retitle the window or
plant a link. Every such value is printed as a `Text` (never markup) with every character
that does not print written as its escape (core.shown): `\\x1b`, `\\n`, `\\u202e`, `\\u200b`.
JSON output needs none of this: `json.dumps` escapes them all.
"""

import os

import typer
from rich.text import Text

from verifier.core.shown import printable


def plain(value: object) -> str:
    """`value` as text with every character that does not print written as its escape."""
    return printable(value)


def text(value: object) -> Text:
    """A table cell or title: `plain`, and never read as markup."""
    return Text(plain(value))


def path(value: os.PathLike[str] | str) -> str:
    """A file name as typed: bytes that are not UTF-8 (argv keeps them as surrogate escapes,
    which stdout refuses to encode) written as `\\xff`, control characters as `plain` does."""
    return plain(os.fsencode(value).decode("utf-8", "backslashreplace"))


def say(message: object, err: bool = False) -> None:
    """One line for the operator, holding values from elsewhere."""
    typer.echo(plain(message), err=err)
