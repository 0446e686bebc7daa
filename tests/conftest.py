"""Runs without --checkpoint-dir save their model to a run folder (hetgmp.train.rundir): in tests,
one temporary folder for the session instead of runs/ under the current directory."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def runs_folder(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HETGMP_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    yield
    mp.undo()
