"""Every fuzz target (fuzz/, docs/fuzzing.md) runs ~2000 inputs under atheris without a
finding: a smoke run that keeps the targets working as the devices change. The long
runs (a million inputs each) are `make fuzz FUZZ_RUNS=1000000`."""

import importlib.util
import os

import pytest

from fuzz.runner import TARGETS, run_all

SETUP = "make setup  (or: .venv/bin/pip install -e '.[test,fuzz]')"
RUNS = 2000


def test_atheris_is_installed():
    if importlib.util.find_spec("atheris") is None:
        pytest.fail(f"atheris is not installed; run: {SETUP}")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if importlib.util.find_spec("atheris") is None:
        pytest.fail(f"atheris is not installed; run: {SETUP}")
    arts = tmp_path_factory.mktemp("fuzz-artifacts")
    return {r.target: r for r in run_all(TARGETS, RUNS, jobs=min(2, os.cpu_count() or 1),
                                         artifacts=arts, seed=1, timeout=60)}


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_clean(results, target):
    r = results[target]
    assert r.ok, f"{target}: {r.crash or f'exit {r.returncode}'}\n{r.tail}"
    assert r.runs == RUNS and r.cov > 0
