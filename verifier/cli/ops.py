"""Operator commands: a client of the staff API.

Where the API is and who calls it: --base-url and --staff-token-file, given before the
command (`railproof --base-url URL list-rail-proofs`) or after it, else RAILPROOF_API_BASE_URL
(or the loopback $PORT `make serve` uses) and RAILPROOF_STAFF_TOKEN.

Every command prints a readable table, or JSON with --json; --incident-id and
--operator-reason travel with every call and are stored with it (in the audit log). Every
command that changes state requires both (and --confirm) and refuses, before sending
anything, when one is missing. Tables print whole values when stdout is not a terminal.
Exit codes: 0 done; 1 refused (a blocker or a 4xx); 2 usage or connection error.
"""

import functools
import inspect
import json
import re
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rails.files import read_regular
from verifier.cli.show import plain, say, text
from verifier.core.config import BEARER_TOKEN_RULE, Settings, bearer_token_ok
from verifier.http.guards import MAX_INCIDENT_ID, MAX_OPERATOR_REASON

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
Incident = Annotated[str | None, typer.Option("--incident-id", help="incident this belongs to")]
Reason = Annotated[str | None, typer.Option("--operator-reason", help="why you do this")]
Confirm = Annotated[bool, typer.Option("--confirm", help="yes, do it")]
Limit = Annotated[
    int | None, typer.Option("--limit", min=1, max=1000, help="at most this many rows")
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        show_default=False,
        help="API base URL (default: RAILPROOF_API_BASE_URL, else http://127.0.0.1:$PORT)",
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--staff-token-file",
        show_default=False,
        help="file holding the staff token (default: RAILPROOF_STAFF_TOKEN)",
    ),
]

# Table width when stdout is not a terminal: wide enough that no value is ever cut or wrapped
# (a table is only as wide as its content needs).
_UNBOUNDED = 1_000_000


# Where the command in progress sends its requests: (base URL, staff token file) from the
# options after the command name, else those before it; set only while the invocation runs.
# Every Client reads it, so any command built on Client honours the global options.
_CONNECTION: ContextVar[tuple[str | None, Path | None]] = ContextVar(
    "railproof_cli_connection", default=(None, None)
)


def global_options(
    ctx: typer.Context, base_url: BaseUrl = None, staff_token_file: TokenFile = None
) -> None:
    """Typer callback of the `railproof` app: --base-url and --staff-token-file before the
    command name apply to the operator command that follows."""
    if base_url or staff_token_file:
        token = _CONNECTION.set((base_url, staff_token_file))
        ctx.call_on_close(lambda: _CONNECTION.reset(token))  # one invocation only


def _settings() -> Settings:
    # The one Settings loader of the CLI: a bad value exits 2 naming its variable.
    from verifier.cli.main import _settings as load

    settings: Settings = load()
    return settings


def _staff_token(settings: Settings | None) -> str:
    path = _CONNECTION.get()[1]
    if path is not None:
        try:
            token = read_regular(path).decode("utf-8").strip()
        except OSError as e:
            _die(f"--staff-token-file: cannot read {path} ({e.strerror or type(e).__name__})")
        except UnicodeDecodeError:
            _die(f"--staff-token-file: {path} is not UTF-8 text")
        if not token:
            _die(f"--staff-token-file: {path} is empty")
        return _usable(token, "--staff-token-file")
    env_token = settings.staff_token if settings is not None else None
    if not env_token:
        _die(
            "RAILPROOF_STAFF_TOKEN is not set: export the staff token the API was "
            "started with (`make serve` prints one), or pass --staff-token-file"
        )
    return _usable(env_token, "RAILPROOF_STAFF_TOKEN")


def _usable(token: str, source: str) -> str:
    # SECURITY: checked before it is sent, never echoed (bearer_token_ok says why).
    if not bearer_token_ok(token):
        _die(f"{source}: {BEARER_TOKEN_RULE}")
    return token


def operator_command(app: typer.Typer, name: str) -> Callable[[Callable[..., Any]], Any]:
    """`app.command(name)` that also takes --base-url and --staff-token-file after the
    command name (they win over the same options given before it)."""

    def deco(fn: Callable[..., Any]) -> Any:
        sig = inspect.signature(fn, eval_str=True)

        @functools.wraps(fn)
        def wrapper(
            *args: Any,
            base_url: str | None = None,
            staff_token_file: Path | None = None,
            **kwargs: Any,
        ) -> Any:
            outer_url, outer_file = _CONNECTION.get()  # given before the command name
            token = _CONNECTION.set((base_url or outer_url, staff_token_file or outer_file))
            try:
                return fn(*args, **kwargs)
            finally:
                _CONNECTION.reset(token)

        kw = inspect.Parameter.KEYWORD_ONLY
        extra = [
            inspect.Parameter("base_url", kw, default=None, annotation=BaseUrl),
            inspect.Parameter("staff_token_file", kw, default=None, annotation=TokenFile),
        ]
        # setattr: functools.wraps's result type does not declare __signature__ (inspect reads it).
        setattr(  # noqa: B010
            wrapper, "__signature__", sig.replace(parameters=[*sig.parameters.values(), *extra])
        )
        wrapper.__annotations__ = {
            **{p.name: p.annotation for p in sig.parameters.values()},
            "base_url": BaseUrl,
            "staff_token_file": TokenFile,
        }
        return app.command(name)(wrapper)

    return deco


def require_operator_context(
    what: str,
    incident_id: str | None,
    operator_reason: str | None,
    confirm: bool | None = None,
    confirm_flag: str = "--confirm",
) -> None:
    """A state-changing command: exit 2, naming every missing flag, before any request."""
    missing = []
    if confirm is not None and not confirm:
        missing.append(confirm_flag)
    if not (incident_id or "").strip():
        missing.append("--incident-id")
    if not (operator_reason or "").strip():
        missing.append("--operator-reason")
    if missing:
        needs = "--incident-id and --operator-reason"
        if confirm is not None:
            needs = f"{confirm_flag}, {needs}"
        _die(
            f"{what} changes production state: missing {', '.join(missing)} (it needs "
            f"{needs}; nothing was sent)"
        )


def limited(rows: Any, limit: int | None) -> Any:
    """At most `limit` rows, for endpoints that return every row."""
    return rows[:limit] if limit is not None and isinstance(rows, list) else rows


class Client:
    def __init__(self, incident_id: str | None, reason: str | None):
        url, token_file = _CONNECTION.get()
        # Settings are read when an option does not say it, once (warnings print once).
        settings = None if url and token_file else _settings()
        self.base = (url or (settings.api_base_url if settings else "")).rstrip("/")
        self.base_option = "--base-url" if url else "--base-url (RAILPROOF_API_BASE_URL)"
        token = _staff_token(settings)
        self.headers = {b"Authorization": f"Bearer {token}".encode()}
        # Where each header's value came from: a refusal names that, never the value.
        self.header_sources = {
            b"Authorization": "--staff-token-file" if token_file else "RAILPROOF_STAFF_TOKEN",
            b"X-Incident-Id": "--incident-id",
            b"X-Operator-Reason": "--operator-reason",
        }
        # Pasted from a ticket or read with "$(cat reason.txt)": the space around a value is
        # not part of it (and HTTP refuses a header value that starts or ends with one).
        incident_id = (incident_id or "").strip() or None
        reason = (reason or "").strip() or None
        # UTF-8, which the API reads these headers as: an operator may write in any language.
        if incident_id:
            self.headers[b"X-Incident-Id"] = _header_text(
                incident_id, "--incident-id", MAX_INCIDENT_ID
            )
        if reason:
            self.headers[b"X-Operator-Reason"] = _header_text(
                reason, "--operator-reason", MAX_OPERATOR_REASON
            )
        self.context = {"incident_id": incident_id, "operator_reason": reason}

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        # Undecodable text (a byte that is not UTF-8 on the command line) is named and
        # refused before anything is sent, wherever it would travel: URL, query or body.
        _text(self.base, self.base_option)
        for name, value in (params or {}).items():
            if isinstance(value, str):
                _text(value, _option_name(name))
        _body_text(body)
        try:
            r = httpx.request(
                method,
                self.base + path,
                headers=self.headers,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                timeout=30.0,
            )
        except httpx.InvalidURL as e:
            try:
                httpx.URL(self.base)
            except httpx.InvalidURL:
                _die(unusable_url(self.base_option, self.base, e))
            # The base is fine: an id or an option made the request's URL unusable.
            _die(f"an id or option makes the request's URL unusable ({e})")
        except httpx.LocalProtocolError:
            # Refused before anything was sent: the request itself is not valid HTTP.
            # SECURITY: httpx's reason quotes the header it refused, which may be the
            # Authorization header and the staff token in it: the source is named instead.
            _die(f"{self._unsendable()} cannot be sent in an HTTP request; nothing was sent")
        except httpx.HTTPError as e:
            _die(
                f"cannot reach the API at {shown_url(self.base)} ({type(e).__name__}); is "
                "`railproof serve` running? pass --base-url or set RAILPROOF_API_BASE_URL "
                "(or PORT, as `make serve` uses)"
            )
        try:
            data = r.json()
        except ValueError:
            _die(f"the API answered {r.status_code} without JSON")
        if r.status_code in (401, 403):
            _die(
                f"{r.status_code}: {data.get('error', {}).get('message', data)}; check "
                "RAILPROOF_STAFF_TOKEN (or --staff-token-file)",
                1 if r.status_code == 403 else 2,
            )
        return r.status_code, data

    def _unsendable(self) -> str:
        """What made the request one HTTP refuses, named by where it came from."""
        for name, value in self.headers.items():
            if _HEADER_FORBIDDEN.search(value) or value != value.strip(b" \t"):
                return self.header_sources.get(name, name.decode("ascii"))
        return "an id or option"


# Bytes HTTP forbids in a header value (HTAB aside).
_HEADER_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def shown_url(url: str) -> str:
    """`url` as messages say it: scheme, host, port and path; never user information (a
    proxy's password, which httpx sends as Authorization) or a query. Also `railproof demo`'s."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return "a URL that is not usable"
    return f"{u.scheme}://{u.netloc.decode('ascii')}{u.path}".rstrip("/")


def unusable_url(source: str, url: str, error: Exception) -> str:
    """The refusal of a base URL httpx cannot use, naming `source` (the option or variable it
    came from). Also `railproof demo`'s."""
    # SECURITY: httpx's reason may quote part of a password (or of a key): a URL that may hold
    # either is not repeated, nor is the reason.
    if "@" in url or "?" in url:
        return f"{source}: not a usable URL"
    return f"{source}: not a usable URL: {url!r} ({error})"


def _header_text(value: str, option: str, limit: int) -> bytes:
    if plain(value) != value:
        _die(f"{option}: must not contain control characters")
    raw = _text(value, option)
    # The API's own limit (counted in bytes, as it reads a header), checked here so that the
    # refusal names the option rather than the header, or the server's 431 for a long one.
    if len(raw) > limit:
        _die(f"{option}: at most {limit} bytes of UTF-8, not {len(raw)}; nothing was sent")
    return raw


# Body fields that come from a positional argument rather than from `--<field>`.
_ARGUMENT_FIELDS = {"issue_id": "an id argument"}


def _option_name(field: str) -> str:
    """The command-line name of the option a request field comes from."""
    return _ARGUMENT_FIELDS.get(field) or f"--{field.replace('_', '-')}"


def _body_text(value: Any, field: str | None = None) -> None:
    """Every string in a JSON body (however nested) is valid text; else exit 2 naming the
    option it came from (the top-level field's)."""
    if isinstance(value, str):
        _text(value, _option_name(field or "body"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _body_text(v, field or str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            _body_text(v, field)


def _text(value: str, option: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError:  # undecodable bytes in the argument (surrogate escapes)
        _die(f"{option}: not valid text in this locale's encoding")


def api_path(template: str, *ids: object) -> str:
    """`template`'s `{}` placeholders filled with ids, each one path segment.

    SECURITY: an id comes from a ticket or a paste: `x/../../rails/x402/pause?` must reach the
    proof route as a proof id that does not exist, not pause a rail under the operator's name.
    Every character but the unreserved ones is escaped, and a dot segment too (a client or
    server would resolve it)."""
    return template.format(*(_segment(str(i)) for i in ids))


def _segment(value: str) -> str:
    if not value:
        _die("an id argument is empty")
    _text(value, "an id argument")
    seg = quote(value, safe="")
    return seg.replace(".", "%2E") if seg in {".", ".."} else seg


def _die(message: str, code: int = 2) -> NoReturn:
    say(f"error: {message}", err=True)
    raise typer.Exit(code)


def _out(
    status: int, data: Any, as_json: bool, columns: list[str] | None = None, title: str = ""
) -> None:
    if status >= 400:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        if as_json:
            typer.echo(json.dumps(data))
        else:
            say(f"refused ({status}) {err.get('code')}: {err.get('message')}", err=True)
            if "report" in err:
                _report(err["report"])
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(data))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        typer.echo("(none)")
        return
    cols = columns or list(rows[0].keys())
    t = _table(title or None, cols)
    for row in rows:
        t.add_row(*[_cell(row.get(c)) for c in cols])
    _console().print(t)


def _table(title: str | None, columns: list[str]) -> Table:
    # Never an ellipsis: a cut id is useless in an incident note. On a terminal a long value
    # folds onto the next line; elsewhere _console() leaves room for every value whole.
    t = Table(title=text(title) if title else None)
    for c in columns:
        t.add_column(text(c), overflow="fold")
    return t


def _console() -> Console:
    c = Console()
    return c if c.is_terminal else Console(width=_UNBOUNDED)


def _cell(v: Any) -> Text:
    return text(_value(v))


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _pairs(v: Any) -> str | None:
    """A flat mapping as `key=value key=value` (None when empty: the cell shows `-`)."""
    if not isinstance(v, dict) or not v:
        return None
    return " ".join(f"{k}={_value(x)}" for k, x in v.items())


def _report(rep: dict[str, Any]) -> None:
    if rep.get("already_applied"):
        # Applied before: nothing would change, and that is not a blocker.
        state = f"already applied (receipt {rep.get('receipt_id') or 'on record'}); nothing to do"
    else:
        state = f"would_apply={rep['would_apply']}"
    t = _table(f"dry-run apply {rep['proof_id']}: {state}", ["check", "passed", "detail"])
    for c in rep["checks"]:
        t.add_row(text(c["name"]), "yes" if c["passed"] else "NO", text(c["detail"]))
    _console().print(t)


_STUCK_COLUMNS = ["principal", "endpoint", "key", "status", "created_at"]


def _endpoint_matches(claimed: str, wanted: str) -> bool:
    """`--endpoint "POST /v1/proofs"` matches exactly; `--endpoint /v1/proofs` matches that
    path under any method."""
    if claimed == wanted:
        return True
    return " " not in wanted.strip() and claimed.partition(" ")[2] == wanted.strip()


def register(app: typer.Typer) -> None:
    command = functools.partial(operator_command, app)

    @command("rail-production-readiness")
    def readiness(
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Per rail: stage, network, production state, pause, verifier, allowlists, blockers,
        and the network's RPC bounds (timeout, attempts, total time, submission budget)."""
        s, d = Client(incident_id, operator_reason).request("GET", "/v1/admin/rails/readiness")
        rows = limited(d, limit)
        if not as_json and s < 400 and isinstance(rows, list):
            # One cell per rail, as the console shows it: key=value for each bound.
            rows = [{**r, "rpc_policy": _pairs(r.get("rpc_policy"))} for r in rows]
        _out(
            s,
            rows,
            as_json,
            [
                "rail_id",
                "stage",
                "network",
                "production_enabled",
                "paused",
                "live_verifier_configured",
                "apply_allowlisted",
                "receipt_creation_allowed",
                "blockers",
                "rpc_policy",
            ],
            "rail readiness",
        )

    @command("list-proof-contracts")
    def contracts(
        rail_id: Annotated[str | None, typer.Option("--rail-id", help="only this rail")] = None,
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """What each rail accepts and what a verified proof may lead to."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/proof-contracts", params={"rail_id": rail_id}
        )
        _out(
            s,
            limited(d, limit),
            as_json,
            [
                "rail_id",
                "stage",
                "accepted_proof_types",
                "finality_requirement",
                "receipt_mapping",
                "activation",
            ],
            "proof contracts",
        )

    @command("list-rail-proofs")
    def list_proofs(
        rail_id: Annotated[str | None, typer.Option("--rail-id", help="only this rail")] = None,
        status: Annotated[
            str | None, typer.Option("--status", help="only proofs in this status, e.g. verified")
        ] = None,
        limit: Annotated[
            int, typer.Option("--limit", min=1, max=1000, help="at most this many rows")
        ] = 50,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Recent proofs, newest first."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/proofs", params={"rail_id": rail_id, "status": status, "limit": limit}
        )
        _out(
            s,
            d,
            as_json,
            [
                "id",
                "rail_id",
                "status",
                "failure_code",
                "owner_id",
                "session_id",
                "receipt_id",
                "created_at",
            ],
            "proofs",
        )

    @command("inspect-rail-proof")
    def inspect_proof(
        proof_id: str,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """One proof with its status, settlement and receipt."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", api_path("/v1/admin/proofs/{}", proof_id)
        )
        if s < 400 and not as_json:
            _out(
                s,
                [{"field": k, "value": v} for k, v in d.items()],
                False,
                ["field", "value"],
                f"proof {proof_id}",
            )
            return
        _out(s, d, as_json)

    @command("list-rail-proof-verification-attempts")
    def attempts(
        proof_id: str,
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Every verification attempt of a proof, with the redacted evidence."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", api_path("/v1/admin/proofs/{}/attempts", proof_id)
        )
        _out(
            s,
            limited(d, limit),
            as_json,
            [
                "id",
                "status",
                "failure_code",
                "rpc_calls",
                "latency_ms",
                "source",
                "created_at",
                "observed",
            ],
            "verification attempts",
        )

    @command("list-rail-proof-settlement-evidence")
    def evidence(
        proof_id: str,
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Settlement evidence rows (finality over time) of a proof."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", api_path("/v1/admin/proofs/{}/settlement-evidence", proof_id)
        )
        _out(
            s,
            limited(d, limit),
            as_json,
            [
                "id",
                "attempt_id",
                "finality",
                "is_final",
                "reorged",
                "slot",
                "block_number",
                "confirmations",
                "observed_at",
            ],
            "settlement evidence",
        )

    @command("dry-run-rail-proof-apply")
    def dry_run(
        proof_id: str,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
        receipt_path: Annotated[
            bool,
            typer.Option("--receipt-path", help="evaluate the staff receipt path (gated rails)"),
        ] = False,
        fail_on_blockers: Annotated[
            bool,
            typer.Option(
                "--fail-on-blockers",
                help="exit 1 when a blocker stands (and the proof is not applied yet)",
            ),
        ] = False,
    ):
        """What would apply do? Every check, nothing changes. Exit 0 when the report was
        produced, whatever it says (1 with --fail-on-blockers when a blocker stands); 1 when
        the call is refused."""
        c = Client(incident_id, operator_reason)
        body = {**c.context, "path": "receipt" if receipt_path else "apply"}
        s, d = c.request("POST", api_path("/v1/admin/proofs/{}/dry-run-apply", proof_id), body)
        if s >= 400:
            _out(s, d, as_json)
        if as_json:
            typer.echo(json.dumps(d))
        else:
            _report(d)
        blocked = not (d.get("would_apply") or d.get("already_applied"))
        raise typer.Exit(1 if fail_on_blockers and blocked else 0)

    @command("list-stuck-idempotency-claims")
    def stuck(
        min_age_seconds: Annotated[
            int | None,
            typer.Option(
                "--min-age-seconds",
                min=0,
                help="claimed at least this long ago "
                "(default: the server's RAILPROOF_STUCK_CLAIM_SECONDS)",
            ),
        ] = None,
        endpoint: Annotated[
            str | None,
            typer.Option(
                "--endpoint",
                help='only claims of this endpoint, e.g. "POST /v1/proofs" '
                "(a bare path matches every method)",
            ),
        ] = None,
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Idempotency claims still in progress past the threshold (listing deletes nothing;
        `assurance-repair` releases one, audited)."""
        s, d = Client(incident_id, operator_reason).request(
            "GET",
            "/v1/admin/idempotency-claims/stuck",
            params={"min_age_seconds": min_age_seconds, "endpoint": endpoint, "limit": limit},
        )
        if s < 400 and isinstance(d, list):
            # Filtered here as well: the API may not take these parameters.
            if endpoint:
                d = [c for c in d if _endpoint_matches(str(c.get("endpoint", "")), endpoint)]
            d = limited(d, limit)
        cols = _STUCK_COLUMNS
        if isinstance(d, list) and d:  # whatever else the API says of a claim (evidence)
            cols = cols + [k for k in d[0] if k not in cols and k != "request_hash"]
        _out(s, d, as_json, cols, "stuck idempotency claims")

    def _confirmed_post(
        what: str,
        path: str,
        confirm: bool,
        as_json: bool,
        incident_id: str | None,
        operator_reason: str | None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """A state-changing staff call: refused here without --confirm, --incident-id and
        --operator-reason; sent with the operator context otherwise."""
        require_operator_context(what, incident_id, operator_reason, confirm)
        c = Client(incident_id, operator_reason)
        _out(*c.request("POST", path, {**(body or {}), "confirm": True, **c.context}), as_json)

    @command("pause-rail")
    def pause(
        rail_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Kill switch: refuse new sessions and proofs on a rail, block apply."""
        _confirmed_post(
            "pause-rail",
            api_path("/v1/admin/rails/{}/pause", rail_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("resume-rail")
    def resume(
        rail_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Lift the kill switch of a rail."""
        _confirmed_post(
            "resume-rail",
            api_path("/v1/admin/rails/{}/resume", rail_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("apply-rail-proof")
    def apply(
        proof_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Apply a verified, final proof: receipt + active entitlement, or nothing."""
        _confirmed_post(
            "apply-rail-proof",
            api_path("/v1/admin/proofs/{}/apply", proof_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("create-rail-proof-receipt")
    def receipt(
        proof_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Staff receipt creation for a gated rail (RAILPROOF_RECEIPT_CREATION_RAILS)."""
        _confirmed_post(
            "create-rail-proof-receipt",
            api_path("/v1/admin/proofs/{}/receipt", proof_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("resolve-rail-proof-review")
    def resolve_review(
        proof_id: str,
        credit: Annotated[
            bool,
            typer.Option("--credit", help="the transfer was made for this proof's session"),
        ] = False,
        release: Annotated[
            bool,
            typer.Option("--release", help="it was not: the proof gives the transfer up"),
        ] = False,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Decide a proof held for review: --credit (an ambiguous transfer, verified again on
        chain) or --release."""
        if credit == release:
            _die("resolve-rail-proof-review: give exactly one of --credit and --release")
        _confirmed_post(
            "resolve-rail-proof-review",
            api_path("/v1/admin/proofs/{}/review", proof_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
            {"decision": "credit" if credit else "release"},
        )

    @command("revoke-entitlement")
    def revoke(
        entitlement_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Revoke an active entitlement (needs --incident-id and --operator-reason)."""
        _confirmed_post(
            "revoke-entitlement",
            api_path("/v1/admin/entitlements/{}/revoke", entitlement_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("request-rail-production")
    def request_production(
        rail_id: str,
        enable: Annotated[
            bool, typer.Option("--enable/--disable", help="turn production on (off)")
        ] = True,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Ask for a production state change (a second staff member approves)."""
        require_operator_context("request-rail-production", incident_id, operator_reason)
        c = Client(incident_id, operator_reason)
        _out(
            *c.request(
                "POST",
                api_path("/v1/admin/rails/{}/production/request", rail_id),
                {"enable": enable, **c.context},
            ),
            as_json,
        )

    @command("approve-rail-change")
    def approve(
        approval_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Approve another staff member's request (two-person rule)."""
        _confirmed_post(
            "approve-rail-change",
            api_path("/v1/admin/approvals/{}/approve", approval_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("reject-rail-change")
    def reject(
        approval_id: str,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Refuse another staff member's request: nothing of it takes effect."""
        _confirmed_post(
            "reject-rail-change",
            api_path("/v1/admin/approvals/{}/reject", approval_id),
            confirm,
            as_json,
            incident_id,
            operator_reason,
        )

    @command("list-entitlements")
    def list_entitlements(
        owner_id: Annotated[str, typer.Option("--owner-id", help="whose entitlements")],
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """One owner's entitlements (pending, active, revoked), oldest first."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/entitlements", params={"owner_id": owner_id, "limit": limit}
        )
        _out(
            s,
            d,
            as_json,
            [
                "id",
                "owner_id",
                "access_product_id",
                "status",
                "receipt_id",
                "session_id",
                "reorg_flagged",
                "updated_at",
            ],
            "entitlements",
        )

    @command("inspect-entitlement")
    def inspect_entitlement(
        entitlement_id: str,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """One entitlement with the receipt that activated it."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", api_path("/v1/admin/entitlements/{}", entitlement_id)
        )
        if s < 400 and not as_json:
            _out(
                s,
                [{"field": k, "value": v} for k, v in d.items()],
                False,
                ["field", "value"],
                f"entitlement {entitlement_id}",
            )
            return
        _out(s, d, as_json)

    @command("list-receipts")
    def list_receipts(
        owner_id: Annotated[
            str | None, typer.Option("--owner-id", help="only this owner's receipts")
        ] = None,
        rail_id: Annotated[str | None, typer.Option("--rail-id", help="only this rail")] = None,
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Receipts, newest first."""
        s, d = Client(incident_id, operator_reason).request(
            "GET",
            "/v1/admin/receipts",
            params={"owner_id": owner_id, "rail_id": rail_id, "limit": limit},
        )
        _out(
            s,
            d,
            as_json,
            [
                "id",
                "proof_id",
                "session_id",
                "owner_id",
                "access_product_id",
                "rail_id",
                "amount",
                "created_by",
                "created_at",
            ],
            "receipts",
        )

    @command("list-approvals")
    def list_approvals(
        status: Annotated[
            str | None,
            typer.Option("--status", help="only approvals in this status, e.g. pending"),
        ] = None,
        limit: Limit = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Two-person approvals (production state, treasury), newest first."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/approvals", params={"status": status, "limit": limit}
        )
        _out(
            s,
            d,
            as_json,
            [
                "approval_id",
                "rail_id",
                "kind",
                "value",
                "status",
                "requested_by",
                "approved_by",
                "incident_id",
                "created_at",
                "decided_at",
            ],
            "approvals",
        )

    @command("request-treasury-change")
    def request_treasury(
        rail_id: Annotated[str, typer.Option("--rail-id", help="the rail whose treasury changes")],
        treasury: Annotated[str, typer.Option("--treasury", help="the new treasury address")],
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Ask for a treasury change (a second staff member approves, as for production)."""
        require_operator_context("request-treasury-change", incident_id, operator_reason)
        c = Client(incident_id, operator_reason)
        _out(
            *c.request(
                "POST",
                api_path("/v1/admin/rails/{}/treasury/request", rail_id),
                {"treasury": treasury, **c.context},
            ),
            as_json,
        )

    @command("list-audit-events")
    def list_audit_events(
        subject_id: Annotated[
            str | None,
            typer.Option("--subject-id", help="only events about this id (proof, rail, ...)"),
        ] = None,
        incident: Annotated[
            str | None,
            typer.Option("--incident-id", help="only events recorded under this incident"),
        ] = None,
        limit: Limit = None,
        as_json: JsonOpt = False,
        operator_reason: Reason = None,
    ):
        """The audit trail, newest first. --incident-id filters (it is not sent as context)."""
        s, d = Client(None, operator_reason).request(
            "GET",
            "/v1/admin/audit",
            params={"subject_id": subject_id, "incident_id": incident, "limit": limit},
        )
        _out(
            s,
            d,
            as_json,
            [
                "id",
                "at",
                "actor",
                "action",
                "subject_type",
                "subject_id",
                "incident_id",
                "reason",
                "data",
            ],
            "audit events",
        )

    @command("assurance")
    def assurance(
        period_days: Annotated[
            int | None,
            typer.Option(
                "--period-days", min=1, max=3650, help="only rows made in this many days back"
            ),
        ] = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Invariant findings with severity (critical, error, warning, info), what to do, and
        whether `assurance-repair` can repair them. Exit 1 when any finding is critical."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/assurance", params={"period_days": period_days}
        )
        if s >= 400:
            _out(s, d, as_json)
        if as_json:
            typer.echo(json.dumps(d))
        else:
            sm = d["summary"]
            window = f", last {sm['period_days']} days" if sm.get("period_days") else ""
            typer.echo(
                f"assurance: {sm['status']} (score {sm['score']}, {sm['alert_count']} "
                f"findings{window})"
            )
            for cut in sm.get("truncated") or []:
                typer.echo(f"not all listed: {cut['category']}: {cut['listed']} of {cut['total']}")
            if d["issues"]:
                _out(
                    200,
                    d["issues"],
                    False,
                    ["id", "severity", "category", "subject", "repairable", "repair"],
                )
        raise typer.Exit(1 if d["summary"]["status"] == "critical" else 0)

    @command("assurance-repair")
    def assurance_repair(
        issue_id: Annotated[str, typer.Argument(help="the issue's id, from `assurance`")],
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Repair one assurance issue with the staff action that fixes it (audited)."""
        require_operator_context("assurance-repair", incident_id, operator_reason, confirm)
        c = Client(incident_id, operator_reason)
        _out(
            *c.request(
                "POST",
                "/v1/admin/assurance/repairs",
                {"issue_id": issue_id, "confirm": True, **c.context},
            ),
            as_json,
        )
