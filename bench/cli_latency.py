"""How long a typo, a dry run and a refused run take: the median wall time of `aepg` commands that
only validate, against `python -c pass` (the interpreter's own start-up).

The first dry run of a backbone reads its facts once (imports torch and timm) and caches them;
that cold time is printed separately, then every command is timed warm.

    python bench/cli_latency.py [--repeat 7]
Target: every median under 1.0 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AEPG = str(Path(sys.executable).with_name("aepg"))
DIGITS = str(REPO / "configs" / "digits.yaml")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "aepg train configs/digits.yaml nonsense.key=1": [AEPG, "train", DIGITS, "nonsense.key=1"],
    "aepg train configs/digits.yaml --dry-run": [AEPG, "train", DIGITS, "--dry-run"],
    "aepg train configs/digits.yaml --resume no-such-run": [AEPG, "train", DIGITS, "--resume", "no-such-run"],
    "aepg sweep sweeps/quickstart.yaml --dry-run": [AEPG, "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--dry-run"],
    "aepg --help": [AEPG, "--help"],
    "aepg --version": [AEPG, "--version"],
}


def timed(command: list[str], env: dict, cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AEPG_CACHE": f"{tmp}/cache"}
        cold = timed(COMMANDS["aepg train configs/digits.yaml --dry-run"], env, tmp)
        print(f"first dry run (reads and caches the backbone's facts): {cold:.2f} s")
        medians = {}
        for name, command in COMMANDS.items():
            medians[name] = statistics.median(timed(command, env, tmp) for _ in range(args.repeat))
            print(f"{name:<{max(map(len, COMMANDS))}} median {medians[name]:.3f} s over {args.repeat}")
    slowest = max(v for k, v in medians.items() if k.startswith("aepg"))
    print(f"slowest aepg command: {slowest:.3f} s (target < 1.0 s; python start-up {medians['python -c pass']:.3f} s)")


if __name__ == "__main__":
    main()
