"""The house a newcomer reads: no source module outside tests/ grows past 400 lines (README, "Layout")."""

from __future__ import annotations

from localstack.services import ROOT

LIMIT = 400
SKIPPED = {".venv", "tests", "mutants", ".cache", ".stack", "node_modules", "artifacts"}


def test_no_module_outside_tests_is_over_400_lines() -> None:
    modules = [p for p in ROOT.rglob("*.py") if not SKIPPED.intersection(p.relative_to(ROOT).parts)]
    assert len(modules) > 100, "the walk found the project's modules"
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > LIMIT}
    assert not long, f"split these by what they do: {long}"
