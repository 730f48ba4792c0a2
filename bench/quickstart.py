"""The main job as a user runs it: `aepg sweep sweeps/quickstart.yaml` in a fresh folder (a fresh
MLflow store, a local Ray), timed from the command to its exit. Prints the wall time, the
machine's cores, the leaderboard and the lines that answer the quickstart's question (aEPG
against CE, paired over seeds).

    python bench/quickstart.py [key=value ...]      # overrides go to the sweep, e.g. search.num_trials=2
Target: a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AEPG = str(Path(sys.executable).with_name("aepg"))


def main(overrides: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="aepg-quickstart-") as folder:
        env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
        start = time.perf_counter()
        done = subprocess.run([AEPG, "sweep", str(REPO / "sweeps" / "quickstart.yaml"), *overrides], cwd=folder,
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        print(f"aepg sweep exited {done.returncode} after {wall:.0f} s")
        return 1
    out = done.stdout
    board = out[out.index("leaderboard, ranked on"):out.index("best config:")].rstrip()
    print(board)
    command = " ".join(["aepg sweep sweeps/quickstart.yaml", *overrides])
    print(f"\nwall time of `{command}`: {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
