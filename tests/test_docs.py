"""The README's tables stay in step with the code's single sources of truth."""

import re
from pathlib import Path

from rails.codes import FailureCode
from registry.catalog import load_catalog
from verifier.core.config import Settings, env_var
from verifier.http.errors import ApiErrorCode

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_failure_code_is_documented_in_order():
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", README, flags=re.M)
    codes = [c.value for c in FailureCode]
    assert [d for d in documented if d in codes] == codes


def api_error_rows() -> list[tuple[str, str]]:
    """(code, HTTP status) of each row of the README's "API error codes" table."""
    section = README.split("### API error codes", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \| ([^|]+?) \|", section, flags=re.M)


def test_every_api_error_code_is_documented_in_order():
    assert [code for code, _ in api_error_rows()] == [c.value for c in ApiErrorCode]


def test_api_error_codes_document_an_http_status():
    for code, status in api_error_rows():
        assert re.fullmatch(r"[45]\d\d|other 4xx", status), (code, status)
    # The statuses the app sets itself (verifier/http/app.py, deps.py, ratelimit.py).
    rows = dict(api_error_rows())
    assert rows["body_too_large"] == "413" and rows["unauthorized"] == "401"
    assert rows["rate_limited"] == "429" and rows["database_busy"] == "503"
    assert rows["invalid_request"] == "422" and rows["internal_error"] == "500"


def test_every_rail_is_documented_with_its_stage():
    for rail_id, d in load_catalog().rails.items():
        assert re.search(rf"^\| {rail_id} \|.*\| {d.stage.value} \|", README, flags=re.M), rail_id


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        if name == "env":
            continue
        assert env_var(name) in README, name


FIX = Path(__file__).resolve().parent.parent / "fixtures"
SOL_SIG = "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"
RUNS = {  # family: (rail, cassette, proof, recipient, amount), proofs that verify as given
    "Solana": (
        "solana_usdc",
        "solana/usdc_transfer.json",
        SOL_SIG,
        "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui",
        1000,
    ),
    "EVM": (
        "evm_usdc",
        "evm/eth_usdc_transfer.json",
        "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7",
        "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8",
        59691936965,
    ),
    "Tron": (
        "tron_usdt",
        "tron/usdt_transfer.json",
        "b69c51db8f9d974e6a38c76852c8ce1adcb682dbacb25ad8ad4f6876121fe9dc",
        "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn",
        3500000,
    ),
}


def documented_statuses(code: str, family: str) -> set[str]:
    """The status column for `code`: `a`, or `a (Family, …) / b (Family, …)`."""
    cell = re.search(rf"^\| `{code}` \| ([^|]+) \|", README, flags=re.M).group(1)
    out = set()
    for part in cell.split(" / "):
        status, _, families = part.strip().partition(" (")
        if not families or family in families.rstrip(")").split(", "):
            out.add(status)
    return out


def test_status_column_says_what_each_family_gives():
    # Terms each family checks differently: a reference or memo the transfer does not carry,
    # and an amount it did not pay. The verdict must be in the table, for that family.
    from verifier.services.offline import OfflineRequest, verify_offline

    other_key = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"  # not in the Solana transfer
    for family, (rail, cassette, proof, recipient, amount) in RUNS.items():
        for terms in ({"reference": other_key}, {"memo": "order-42"}, {"amount": amount + 1}):
            req = OfflineRequest(
                rail=rail,
                proof=proof,
                recipient=recipient,
                cassette=FIX / cassette,
                **{"amount": amount, **terms},
            )
            out = verify_offline(req)
            assert out["failure_code"] is not None, (family, terms, out)
            assert out["status"] in documented_statuses(out["failure_code"], family), (
                family,
                terms,
                out["status"],
                out["failure_code"],
            )
