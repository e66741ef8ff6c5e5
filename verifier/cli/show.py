"""How the CLI prints text it did not write: values stored by tenants (webhook URLs, memos), by
a tenant's webhook receiver (a delivery's last error), by other staff (reasons), or sent back
by the API.

SECURITY: such text reaches an operator's terminal. Rich reads `[...]` in a plain string as
markup (a tenant's URL holding `[/x]` crashed the table, `[conceal]` hid what is stored) and
passes ESC through, so a receiver's error body could clear the screen, retitle the window or
plant a link. Every such value is printed as a `Text` (never markup) with its control
characters (C0, DEL, C1) and the bidirectional overrides written as escapes: `\\x1b`, `\\n`,
`\\u202e`. JSON output needs none of this: `json.dumps` escapes them all.
"""

import re

import typer
from rich.text import Text

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


def plain(value: object) -> str:
    """`value` as text with every control character written as its escape."""
    return _UNSAFE.sub(_escape, str(value))


def text(value: object) -> Text:
    """A table cell or title: `plain`, and never read as markup."""
    return Text(plain(value))


def say(message: object, err: bool = False) -> None:
    """One line for the operator, holding values from elsewhere."""
    typer.echo(plain(message), err=err)
