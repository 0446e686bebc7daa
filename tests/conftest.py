"""Runs without --checkpoint-dir save their model to a run folder (hetgmp.train.rundir): in tests,
one temporary folder for the session instead of runs/ under the current directory.

Set when pytest starts, before any test module is imported: several build their
subprocess environment from os.environ at import time."""

import os
import shutil
import tempfile

_RUNS = "HETGMP_RUNS_DIR"


def pytest_configure(config):
    if _RUNS not in os.environ:
        os.environ[_RUNS] = tempfile.mkdtemp(prefix="hetgmp-test-runs-")
        config._hetgmp_runs = os.environ[_RUNS]


def pytest_unconfigure(config):
    made = getattr(config, "_hetgmp_runs", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        del os.environ[_RUNS]
