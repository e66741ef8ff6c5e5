"""The README's tables stay in step with the code's single sources of truth."""

import re
from pathlib import Path

from rails.codes import FailureCode
from registry.catalog import load_catalog
from verifier.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_failure_code_is_documented_in_order():
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", README, flags=re.M)
    codes = [c.value for c in FailureCode]
    assert [d for d in documented if d in codes] == codes


def test_every_rail_is_documented_with_its_stage():
    for rail_id, d in load_catalog().rails.items():
        assert re.search(rf"^\| {rail_id} \|.*\| {d.stage.value} \|", README, flags=re.M), rail_id


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        if name == "env":
            continue
        assert f"RAILPROOF_{name.upper()}" in README, name
