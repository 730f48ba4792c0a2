"""``aepg`` command line: train, sweep, report.

Bad configs exit with code 2 and one message per bad key; missing data or weights exit
with code 1 and a message saying how to get them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aepg.config import ConfigError

EXIT_CONFIG = 2


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "ray", "timm", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _matrix(R: list[list[float]]) -> str:
    return "\n".join("  " + " ".join(f"{a:6.3f}" for a in row) for row in R)


def cmd_train(args) -> int:
    from aepg.config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    from aepg.launch import run

    result = run(cfg, resume=args.resume)
    summary = result.state.summary
    print(f"\nrun {result.run_id} finished ({len(result.state.accuracy_matrix)} tasks)")
    print("accuracy matrix R[i][j] (row: after task i, column: task j):")
    print(_matrix(result.state.accuracy_matrix))
    for key, value in summary.items():
        print(f"{key:>26}: {value:.4f}")
    print(f"\nsee it with: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aepg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one continual fine-tuning job")
    train.add_argument("config", help="run config YAML (see configs/)")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-3")
    train.add_argument("--dry-run", action="store_true", help="validate and print the resolved config")
    train.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its latest checkpoint")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`train C --dry-run a=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    _setup_logging()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from aepg.benchmarks import DatasetNotFound
    from aepg.models import PeftError, WeightsError

    try:
        return args.func(args)
    except ConfigError as error:
        print("aepg: invalid configuration:", file=sys.stderr)
        for key, message in error.problems:
            print(f"  {key}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatasetNotFound, WeightsError, PeftError) as error:
        print(f"aepg: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aepg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
