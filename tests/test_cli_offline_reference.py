"""verify-offline checks `--reference` as a session does on a rail that binds one: a value
that is not a valid key there (a typo, a pasted key with a space or a zero-width character,
a truncated key) is bad input, exit 2 naming --reference, not the transfer's verdict
`failed reference_missing` (exit 0) for a genuine payment. The service refuses the same
values for a session (`invalid_reference`, 422)."""

import json

import pytest

from tests.test_cli_offline import solana

PAYER = "8fusVwhgo4oS1fGpZKeRaXrJXQk9auKnAgcj9A97wR3t"


@pytest.mark.parametrize(
    "reference",
    [
        "not-a-key!!",  # not base58 at all
        " " + PAYER,  # a real key pasted with a leading space
        PAYER + "\u200b",  # a real key with a zero-width space
        PAYER[:-4],  # too short to be 32 bytes
    ],
    ids=["garbage", "leading-space", "zero-width", "short"],
)
def test_a_malformed_reference_exits_2_naming_it(reference):
    r = solana("--reference", reference, "--json")
    verdict = json.loads(r.stdout) if r.stdout.strip() else None
    assert r.returncode == 2, (
        f"exit {r.returncode}, answered as a verdict: "
        f"{verdict and (verdict['status'], verdict['failure_code'])}"
    )
    assert "--reference" in r.stderr and r.stdout == ""


def test_a_well_formed_reference_the_transfer_lacks_is_still_a_verdict():
    # The payer's key is a valid key the transfer does not carry as a reference.
    r = solana("--reference", PAYER, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["failure_code"] == "reference_missing"
