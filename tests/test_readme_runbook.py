"""The README's runbook names only commands and flags that exist.

Every command line in the README's "Operator CLI" and "Reconciliation and payment discovery"
sections — an inline code span or a fenced line that starts with `railproof` or with a
command's hyphenated name, and every bare `--flag` span — is checked against the Typer app
itself (`typer.main.get_command`): the command (and its subcommand, for groups such as `db`
and `audit`) must exist, and each flag must be one of its options (or a global one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from verifier.cli.main import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTIONS = ("## Operator CLI", "## Reconciliation and payment discovery")
# Other sections that show commands: there only lines that start with `railproof` are
# commands (a hyphenated span may be a header name, such as webhook-id).
COMMAND_SECTIONS = (
    "## Quick start",
    "## Rails, stages and the apply gate",
    "## Configuration",
    "## Webhooks",
    "## Observability",
    "## Running several instances",
    "## Performance",
)
HYPHENATED = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*$")


def section(title: str, text: str = README) -> str:
    assert f"\n{title}\n" in text, f"README has no section {title!r}"
    body = text.split(f"\n{title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def spans(text: str) -> list[str]:
    """Inline code spans and fenced lines (a trailing backslash continues a line)."""
    out: list[str] = []
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    for block in fenced:
        out += [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    # A span may wrap onto the next line, as Markdown allows.
    out += [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    return out


# Typer's command objects (its own Click): a group is a command with subcommands.
Command = Any


def _is_group(cmd: Command) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def _root() -> Command:
    cmd = typer.main.get_command(app)
    assert _is_group(cmd) and cmd.commands
    return cmd


def _options(cmd: Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def _flags(tokens: list[str]) -> list[str]:
    """The --flags among a command line's tokens (`[--a X]`, `--a/--b`, `--a=X`, `--a|--b`)."""
    out = []
    for tok in tokens:
        for part in re.split(r"[/|]", tok.strip("[](),.;")):
            part = part.split("=", 1)[0].strip("[](),.;")
            if part.startswith("--"):
                out.append(part)
    return out


def check_line(line: str, root: Command) -> list[str]:
    """What is wrong with one command line (empty: nothing). Lines that are not commands
    (values, URLs, variables) are not checked."""
    tokens = line.replace("[", " [ ").replace("]", " ] ").split()
    tokens = [t for t in tokens if t not in ("[", "]", "…", "...")]
    if not tokens:
        return []
    globals_ = _options(root) | {"--help"}
    if FLAG.match(tokens[0]) or tokens[0].startswith("--"):
        # A bare flag span: it must be an option of some command, or a global one.
        known = globals_ | {o for c in _walk(root) for o in _options(c)}
        return [f"{line!r}: no command takes {f}" for f in _flags(tokens) if f not in known]
    if tokens[0] == "railproof":
        tokens = tokens[1:]
        # Global options before the command name, with their values.
        while tokens and tokens[0].startswith("--"):
            opt = tokens.pop(0).split("=", 1)[0]
            if opt not in globals_:
                return [f"{line!r}: {opt} is not a global option"]
            if "=" not in opt and tokens and not tokens[0].startswith("-"):
                param = next(p for p in root.params if opt in p.opts)
                if not getattr(param, "is_flag", False):
                    tokens.pop(0)
        if not tokens:
            return []
    elif not HYPHENATED.match(tokens[0]) and tokens[0] not in root.commands:
        return []  # not a command line: a value, a route, a variable
    cmd: Command = root
    path = ["railproof"]
    while _is_group(cmd) and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            return [f"{line!r}: {' '.join(path)} has no command {name!r}"]
        cmd, path = sub, [*path, name]
    known = _options(cmd) | globals_
    return [
        f"{line!r}: {' '.join(path)} has no option {f}" for f in _flags(tokens) if f not in known
    ]


def _walk(group: Command) -> list[Command]:
    out: list[Command] = []
    for c in group.commands.values():
        out.append(c)
        if _is_group(c):
            out += _walk(c)
    return out


def runbook_lines() -> list[str]:
    lines = [line for title in SECTIONS for line in spans(section(title))]
    return lines + [
        line
        for title in COMMAND_SECTIONS
        for line in spans(section(title))
        if line.startswith("railproof ")
    ]


def test_every_runbook_command_and_flag_exists():
    root = _root()
    problems = [p for line in runbook_lines() for p in check_line(line, root)]
    assert not problems, "\n".join(problems)


def test_the_runbook_lists_the_operator_commands():
    # The parser sees the commands (a parser that found nothing would pass the test above).
    named = set()
    for line in runbook_lines():
        tokens = line.split()
        if tokens and tokens[0] == "railproof":
            tokens = [t for t in tokens[1:] if not t.startswith("-")]
        if tokens and (HYPHENATED.match(tokens[0]) or tokens[0] in _root().commands):
            named.add(tokens[0])
    for command in (
        "list-entitlements",
        "inspect-entitlement",
        "list-receipts",
        "list-approvals",
        "reject-rail-change",
        "request-treasury-change",
        "list-audit-events",
        "assurance",
        "assurance-repair",
        "dry-run-rail-proof-apply",
        "reconcile",
    ):
        assert command in named, f"README's operator section does not list {command}"


@pytest.mark.parametrize(
    "line,wrong",
    [
        ("railproof list-rail-proofz", "has no command 'list-rail-proofz'"),
        ("list-rail-proofz --limit 3", "has no command 'list-rail-proofz'"),
        ("railproof list-rail-proofs --colour", "has no option --colour"),
        ("list-approvals [--state pending]", "has no option --state"),
        ("railproof audit verifyy", "railproof audit has no command 'verifyy'"),
        ("railproof --base-uri X list-rail-proofs", "--base-uri is not a global option"),
        ("--not-a-flag", "no command takes --not-a-flag"),
        ("railproof assurance --period-days=3 --periods", "has no option --periods"),
    ],
)
def test_the_check_catches_a_wrong_command_or_flag(line, wrong):
    problems = check_line(line, _root())
    assert problems and wrong in problems[0], problems


@pytest.mark.parametrize(
    "line",
    [
        "railproof --base-url http://127.0.0.1:8000 list-rail-proofs --limit 5",
        "railproof db upgrade",
        "request-rail-production ID --enable",
        "reconcile --scope rail_proofs|chain_inflows [--rail-id R] [--apply --confirm]",
        "list-audit-events [--subject-id ID] [--incident-id INC]",
        "RAILPROOF_API_BASE_URL",
        "POST /v1/admin/assurance/repairs",
        "orphan_bound",
    ],
)
def test_the_check_accepts_what_exists(line):
    assert check_line(line, _root()) == []


def test_spans_reads_inline_code_and_fenced_lines():
    text = "a `railproof x --y` b\n```\nrailproof p \\\n  --q\n```\n`z\n--w`\n"
    assert spans(text) == ["railproof p    --q", "railproof x --y", "z --w"]
