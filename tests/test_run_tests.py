"""scripts/run_tests.py, which `make test` runs: the suite in several pytest processes, failing
when any of them fails, over every file one pytest would collect."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "run_tests", Path(__file__).resolve().parent.parent / "scripts" / "run_tests.py"
)
assert _SPEC is not None and _SPEC.loader is not None
run_tests = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(run_tests)


def test_a_selection_runs_one_process():
    assert run_tests._selects("tests/test_x.py") and run_tests._selects("-kslow")
    assert run_tests._selects("-mpostgres") and run_tests._selects("name")
    assert not run_tests._selects("-q") and not run_tests._selects("-k")
    assert not run_tests._selects("-x") and not run_tests._selects("--maxfail=1")


def test_files_are_dealt_by_size(tmp_path):
    sizes = {"a": 900, "b": 500, "c": 450, "d": 10}
    files = []
    for name, size in sizes.items():
        f = tmp_path / f"test_{name}.py"
        f.write_text("#" * size)
        files.append(f)
    groups = run_tests.deal(files, 2)
    assert sorted(f.stem for f in groups[0]) == ["test_a", "test_d"]
    assert sorted(f.stem for f in groups[1]) == ["test_b", "test_c"]


def test_a_failure_in_any_file_fails_the_run_those_in_subfolders_too(tmp_path, monkeypatch):
    (tmp_path / "tests").mkdir()
    for n in range(3):
        (tmp_path / "tests" / f"test_ok{n}.py").write_text("def test_ok():\n    assert True\n")
    bad = tmp_path / "tests" / "sub" / "test_late.py"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("def test_bad():\n    assert 1 == 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEST_JOBS", "2")
    monkeypatch.setattr(sys, "argv", ["run_tests.py"])
    assert run_tests.main(["-q"]) == 1
    bad.write_text("def test_good():\n    assert True\n")
    assert run_tests.main(["-q"]) == 0
