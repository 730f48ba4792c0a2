import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
AEPG = Path(sys.executable).with_name("aepg")


def run_aepg(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed ``aepg`` console script as a user would."""
    return subprocess.run([str(AEPG), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def start_aepg(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start the ``aepg`` console script in the background (output merged, as text)."""
    return subprocess.Popen([str(AEPG), *args], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
