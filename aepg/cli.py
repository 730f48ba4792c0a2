"""``aepg`` command line: train, sweep, report, list, cluster.

Bad input (configs, sweep files, overrides, paths, missing data) exits with code 2 and one line
per problem, naming the key or file, before any compute; a failure during a run exits with
code 1 (so does a sweep in which no trial finished); Ctrl-C, SIGTERM and SIGHUP stop a run or
sweep resumably and exit with 128 + the signal's number. Validation imports neither torch,
timm, Ray nor MLflow, so a typo costs well under a second; those are imported only to do the work.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import textwrap

from aepg import __version__, interrupts
from aepg.config import ConfigError, shown_path

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "ray", "timm", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _matrix(R: list[list[float]]) -> str:
    return "\n".join("  " + " ".join(f"{a:6.3f}" for a in row) for row in R)


def _warn(notes: list[str]) -> None:
    for note in notes:
        print(f"aepg: warning: {note}", file=sys.stderr)


def cmd_train(args) -> int:
    from aepg import preflight
    from aepg.config import load_config, to_yaml
    from aepg.config.files import ignored_overrides

    if not args.config:
        raise ConfigError([("CONFIG", "give a run config file, e.g. aepg train configs/digits.yaml [key=value ...]")])
    if "=" in args.config and not os.path.exists(args.config):
        raise ConfigError([("CONFIG", f"{args.config!r} looks like an override; give the run config file first: "
                            "aepg train CONFIG key=value ...")])
    if args.resume is not None and not args.resume.strip():
        raise ConfigError([("--resume", "give the id of the MLflow run to continue")])
    cfg = load_config(args.config, args.overrides)
    _warn(ignored_overrides(cfg, args.overrides) + preflight.warnings(cfg))
    preflight.check(cfg, args.resume)  # every refusal comes before the trainer is imported
    if args.dry_run:
        print(to_yaml(cfg), end="")
        print("# data: " + preflight.data_location(cfg))
        print("\n".join("# " + line for line in preflight.plan(cfg).lines()))
        return 0
    from aepg.launch import run

    try:
        result = run(cfg, resume=args.resume, checked=True, ray_log=True)
    except interrupts.RunInterrupted as stopped:
        print(f"aepg: run {stopped.run_id} marked KILLED, its checkpoints kept; continue it with: "
              f"aepg train {shlex.join([args.config, *args.overrides])} --resume {stopped.run_id}", file=sys.stderr)
        raise
    summary = result.state.summary
    print(f"\nrun {result.run.run_id} finished ({len(result.state.accuracy_matrix)} tasks)")
    print("accuracy matrix R[i][j] (row: after task i, column: task j):")
    print(_matrix(result.state.accuracy_matrix))
    for key, value in summary.items():
        print(f"{key:>26}: {value:.4f}")
    tracker = result.run.tracker
    print("\n" + "\n".join(tracker.ui_hint(tracker.get_run(result.run.run_id)[0].experiment_id)))
    return 0


def cmd_sweep(args) -> int:
    from aepg.sweep.checks import load_sweep, sweep_warnings
    from aepg.sweep.state import read_state, sweep_folder

    if args.resume is not None:
        if not args.resume.strip():
            raise ConfigError([("--resume", "give the sweep's output folder (printed as the sweep started)")])
        if args.sweep or args.overrides:
            raise ConfigError([("--resume", "takes only the sweep folder; its sweep file and overrides were saved")])
        path = sweep_folder(args.resume)
        state = read_state(path)
        if args.dry_run:
            print(f"would resume sweep {state['spec']['name']} from {path}")
            return 0
        sweep = None
    else:
        if not args.sweep:
            raise ConfigError([("SWEEP", "give a sweep file (see sweeps/), or --resume PATH")])
        sweep = load_sweep(args.sweep, args.overrides)
        _warn(sweep_warnings(sweep))
    if args.dry_run:
        from aepg.sweep.plan import sweep_plan

        print("\n".join(sweep_plan(sweep)))
        return 0
    from aepg.sweep.driver import finalize, nothing_finished, resume_sweep, run_sweep

    runtime, complete = resume_sweep(path, args.verbose) if args.resume is not None else run_sweep(sweep, args.verbose)
    if not complete:
        if not interrupts.stop_handled():  # a stop signal's action said it already
            print(f"\nsweep {interrupts.reason()}; continue it with: aepg sweep --resume {shown_path(runtime.path)}",
                  file=sys.stderr)
        return interrupts.exit_code()
    report = finalize(runtime)
    width, folder = _width(), shown_path(runtime.path)
    if report.best is None:
        print(f"\naepg: sweep {runtime.name}: {nothing_finished(runtime)}\n{report.narrow_text(width)}", file=sys.stderr)
        print(f"sweep outputs: {folder}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\nleaderboard, ranked on final/{report.metric}:\n{report.narrow_text(width)}\n")
    if report.noise:
        print(textwrap.fill(report.noise.verdict, width))
    if report.best_yaml:
        print(f"best config: {folder}/best.yaml\n  reproduce it with: aepg train {folder}/best.yaml")
    print(f"sweep outputs: {folder}")
    print("\n".join(runtime.tracker.ui_hint(report.experiment_id)))
    if report.verdict:  # the answer, last
        print("\n" + textwrap.fill(report.verdict, width))
    return 0




def _width() -> int:
    """The terminal's width; 80 where the output is not a terminal (a log, a pipe)."""
    return shutil.get_terminal_size((80, 24)).columns


def cmd_report(args) -> int:
    from pathlib import Path

    from aepg.tracking import Tracker

    out = Path(args.out or f"sweep-report-{'+'.join(args.sweep)}")
    if out.exists() and not out.is_dir():
        raise ConfigError([("--out", f"{out} is a file; give a folder for the report")])
    tracker = Tracker.for_reading(args.tracking_uri)  # before MLflow touches the store: it would create an empty one
    from aepg.schema import KIND_TAG
    from aepg.sweep.params import find_sweep
    from aepg.sweep.publish import publish
    from aepg.sweep.report import build_report, paper_table, report_texts

    parents = []
    for name in args.sweep:
        parent = find_sweep(tracker, name)
        if parent is None:
            try:
                run, _ = tracker.get_run(name)
            except Exception:
                raise ConfigError([("SWEEP", f"no sweep named {name!r} and no such run in {tracker.uri}")]) from None
            if run.tags.get(KIND_TAG) != "sweep":
                raise ConfigError([("SWEEP", f"run {name} is not a sweep's parent run (no {KIND_TAG}=sweep tag); "
                                    "give a sweep name, its folder name, or its parent run id")])
            parent = name
        parents.append(parent)
    table = paper_table(tracker, parents, args.rows, args.columns)
    reports = {parent: build_report(tracker, parent) for parent in parents}
    if all(report.best is None for report in reports.values()):
        names = ", ".join(report.name for report in reports.values())
        resume = "; ".join(f"aepg sweep --resume {tracker.get_run(parent)[0].params.get('sweep.path', '?')}"
                           for parent in parents)
        print(f"aepg: no configuration of {names} finished: nothing to report (a sweep still running, interrupted "
              f"or failed); continue it with: {resume}", file=sys.stderr)
        return EXIT_FAILED
    for parent, report in reports.items():
        publish(tracker, parent, report, table)
        folder = out / report.name if len(parents) > 1 else out
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in report_texts(report, table).items():
            (folder / name).write_text(text)
        for name, figure in report.figures.items():
            figure.savefig(folder / name, dpi=120, bbox_inches="tight")
        print(f"sweep {report.name}: trials ranked on final/{report.metric}\n{report.narrow_text(_width())}\n")
        for verdict in (report.verdict, report.noise.verdict if report.noise else ""):
            if verdict:
                print(f"{textwrap.fill(verdict, _width())}\n")
    print(f"table ({args.rows} x {args.columns}):\n{table.markdown()}\n")
    print(f"wrote {out}/ (leaderboard, paper_table.md/.csv/.tex, plots) and logged them to the sweep's parent run")
    return 0


def cmd_cluster(args) -> int:
    if args.workers == 0 and args.head_cpus == 0:
        raise ConfigError([("--head-cpus", "0 CPUs on the head and no worker nodes: the cluster could run nothing; "
                            "give the head CPUs or add --workers")])
    from aepg.cluster import run_local_cluster

    return run_local_cluster(args.workers, args.head_cpus, args.worker_cpus, args.start_timeout)


def cmd_list(args) -> int:
    """Every entry of each catalogue (or of one): its name, what it is, its keys with their
    defaults, and the package that provides it."""
    from aepg.catalog import CATALOGS, provider
    from aepg.config import RunConfig, setting_of
    from aepg.sweep.spec import SweepSpec

    width = min(shutil.get_terminal_size().columns, 100)
    for name in [args.catalogue] if args.catalogue else list(CATALOGS):
        catalog = CATALOGS[name]
        entries = catalog.items()
        indent = 2 + max(len(entry_name) for entry_name, _ in entries) + 2
        print(f"{name} ({setting_of(catalog, RunConfig, SweepSpec)})")
        for entry_name, entry in entries:
            package, version = provider(entry.module)
            print(textwrap.fill(f"{entry.doc} [{package}=={version}]", width,
                                initial_indent=f"  {entry_name:<{indent - 2}}", subsequent_indent=" " * indent))
            keys = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else
                             f"{key}={{{', '.join(value)}}}" if isinstance(value, dict) else f"{key}={value}"
                             for key, value in entry.defaults().items())
            if keys:
                print(textwrap.fill(f"keys: {keys}", width, initial_indent=" " * indent,
                                    subsequent_indent=" " * (indent + 6)))
        print()
    return 0


def _count(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (Ray counts CPUs of a node in whole units)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from aepg.catalog import CATALOGS  # names only: no entry is imported

    parser = argparse.ArgumentParser(prog="aepg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aepg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one continual fine-tuning job")
    train.add_argument("config", nargs="?", help="run config YAML (see configs/)")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-3")
    train.add_argument("--dry-run", action="store_true", help="check everything a run checks, print the resolved config and the run's size")
    train.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its latest checkpoint")
    train.set_defaults(func=cmd_train)

    sweep = commands.add_parser("sweep", help="search objectives, schedules and PEFT settings with Ray Tune + Optuna")
    sweep.add_argument("sweep", nargs="?", help="sweep file (see sweeps/)")
    sweep.add_argument("overrides", nargs="*", help="dotted key=value overrides of the sweep file")
    sweep.add_argument("--resume", metavar="PATH", help="continue an interrupted sweep from its output folder")
    sweep.add_argument("--dry-run", action="store_true", help="check the sweep file, its base config and its space; print its size")
    sweep.add_argument("--verbose", action="store_true",
                       help="print Ray Tune's status tables and every trial's output (by default: one line per event)")
    sweep.set_defaults(func=cmd_sweep)

    report = commands.add_parser("report", help="leaderboard, plots and the paper's table of past sweeps, from MLflow")
    report.add_argument("sweep", nargs="+", help="sweep name, sweep folder name, or parent run id (several: one table)")
    report.add_argument("--rows", default="method", help="rows of the table: method (PEFT module, LAE) or any config key")
    report.add_argument("--columns", default="objective.kind", help="columns of the table (default objective.kind)")
    report.add_argument("--out", help="folder for the plots and tables (default ./sweep-report-NAME)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    report.set_defaults(func=cmd_report)

    listing = commands.add_parser("list", help="the catalogues: objectives, a_t schedules, methods, parts, data sets, "
                                  "optimisers, learning-rate schedules, searchers, schedulers, sweep protocols")
    listing.add_argument("catalogue", nargs="?", choices=list(CATALOGS), help="one catalogue (default: all)")
    listing.set_defaults(func=cmd_list)

    cluster = commands.add_parser("cluster", help="clusters for trying multi-node features")
    cluster_kinds = cluster.add_subparsers(dest="kind", required=True)
    local = cluster_kinds.add_parser("local", help="a head and worker nodes on this machine, until Ctrl-C")
    local.add_argument("--workers", type=_count(0), default=1, metavar="N", help="worker nodes besides the head (default 1)")
    local.add_argument("--head-cpus", type=_count(0), default=1, metavar="N", help="CPUs of the head; 0 keeps work off it (default 1)")
    local.add_argument("--worker-cpus", type=_count(1), default=1, metavar="N", help="CPUs of each worker node (default 1)")
    local.add_argument("--start-timeout", type=_count(1), default=60, metavar="S",
                       help="how long each node may take to start before the cluster gives up (default 60)")
    local.set_defaults(func=cmd_cluster)
    return parser


def _runtime_errors() -> tuple[type[Exception], ...]:
    """Failures with a message for the user rather than a traceback (imported only when one happened)."""
    from aepg.benchmarks import DataError, DatasetNotFound
    from aepg.benchmarks.cache import CacheBusy, CacheDamaged
    from aepg.catalog import PluginError
    from aepg.models import WeightsError
    from aepg.models.peft import MethodError
    from aepg.preflight import StorageUnavailable
    from aepg.ray_setup import RayStartError
    from aepg.tracking import TrackingUnavailable

    return (DatasetNotFound, DataError, CacheBusy, CacheDamaged, WeightsError, MethodError, TrackingUnavailable, PluginError,
            RayStartError, StorageUnavailable)


def _leave_ray_after_interrupt() -> None:
    """Exit now when this process drives Ray: its runs are already closed, and an interrupted
    Ray Train fit leaves native threads that can crash the interpreter's shutdown (SIGSEGV).
    Ray is shut down first, so a local instance this process started stops with it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(interrupts.exit_code())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`train C --dry-run a=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    _setup_logging()
    interrupts.install()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its own level on import
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a link per closed run, from a server
    try:
        return args.func(args)
    except BrokenPipeError:  # the output went to `head` or a closed pager: not a failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigError as error:
        print("aepg: invalid input:", file=sys.stderr)
        for key, message in error.problems:
            print(f"  {key}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        progress = sys.modules.get("aepg.sweep.progress")  # a sweep's live table gives the terminal back
        if progress is not None:
            progress.stop_live()
        print(f"aepg: {interrupts.reason()}", file=sys.stderr)
        _leave_ray_after_interrupt()
        return interrupts.exit_code()
    except Exception as error:
        if isinstance(error, _runtime_errors()):
            print(f"aepg: {_message(error)}", file=sys.stderr)
            return EXIT_FAILED
        run_id = _failed_run(error)
        if run_id:  # the run is FAILED with this reason and holds the traceback
            first = f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"aepg: run {run_id} failed: {first}\n  its traceback is the run's error.log artifact in MLflow",
                  file=sys.stderr)
            return EXIT_FAILED
        raise


def _message(error: Exception) -> str:
    """The error's message; for one a DataLoader worker raised, the original's, without the
    worker's traceback that PyTorch puts in front of it."""
    message = str(error)
    if "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].partition(": ")[2] or message
    return message


def _failed_run(error: BaseException) -> str | None:
    launch = sys.modules.get("aepg.launch")  # only a run that started can have failed
    return launch.failed_run(error) if launch else None


if __name__ == "__main__":
    sys.exit(main())
