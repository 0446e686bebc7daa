"""`hetgmp` run as a real subprocess, and the checks every user-facing failure must pass.

    proc = hetgmp("train", "--data", str(ds), "--lr", "-1", cwd=tmp_path)
    assert_clean_error(proc, "train", "argument --lr")

The subprocess imports this checkout's `src` (an absolute PYTHONPATH), whatever its cwd.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def hetgmp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hetgmp.cli", *args]


def hetgmp(*args: str, cwd: Path | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(hetgmp_command(*args), cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def assert_clean_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """Exit 2, exactly one `hetgmp COMMAND: error: ...` line holding every fragment, no traceback; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"hetgmp {command}: error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
