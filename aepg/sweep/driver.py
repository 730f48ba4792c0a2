"""Run a sweep with Ray Tune: its searcher and scheduler, its protocol's trials, MLflow runs, and
the sweep's life cycle (start, resume, a confirmation stage, the final report, every way it ends).

The driver owns MLflow: it opens the sweep's parent run, and through its callback
(``aepg.sweep.trial_runs``) opens each trial's child run when the trial starts and sets every
status. A trial only logs into the runs it was handed and the runs it nests under its own. What a
trial trains is its protocol's (``aepg.sweep.protocols``): the driver calls the protocol's trial
body and never branches on which it is.

Trials are ranked on ``final/<metric>``, which only trials that trained their whole budget report;
the scheduler and Optuna compare trials under way on the protocol's running value.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune

from aepg import interrupts, preflight, schema
from aepg.catalog import SCHEDULERS
from aepg.config import ConfigError, is_uri, shown_path
from aepg.ray_setup import (check_shared_storage, ensure_ray, refuse_unschedulable, route_library_output, watch_head,
                            worker_resources)
from aepg.schema import KIND_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG
from aepg.sweep import search
from aepg.sweep.checks import variants
from aepg.sweep.params import parent_params
from aepg.sweep.progress import HideRestoreHint, LiveSweepTable, SweepProgress, driver_log, keep_driver_log, stop_live
from aepg.sweep.publish import publish
from aepg.sweep.report import SweepReport, build_report, paper_table, report_texts
from aepg.sweep.runtime import TRIAL_PREFIX, SweepRuntime, started
from aepg.sweep.spec import Sweep, expected_trials
from aepg.sweep.tracking_watch import TrackingWatch
from aepg.sweep.trial_runs import MlflowTrialRuns
from aepg.tracking import Tracker, TrackingUnavailable

log = logging.getLogger("aepg")


def run_trial(config: dict, runtime: SweepRuntime) -> None:
    """One trial: the run the driver handed it as the trial started, trained as its protocol says.
    (Tune calls on_trial_start, which hands the run over, before the trial's first step runs this.)"""
    run, cfg = started(runtime, tune.get_context().get_trial_id(), config.get("params", config))
    runtime.sweep.protocol.train_trial(cfg, run, runtime)


def _trainable(runtime: SweepRuntime):
    sweep = runtime.sweep
    resources = {k.lower() if k in ("CPU", "GPU") else k: v for k, v in sweep.protocol.trial_resources(sweep).items()}
    return tune.with_resources(tune.with_parameters(run_trial, runtime=runtime), resources)


TRIAL_FIX = "lower trial.cpus, trial.gpus or trial.resources (and scaling.num_workers for trials that drive workers)"


def _check_trial_fits(sweep: Sweep) -> None:
    """One run of a trial must fit a node of the cluster (its process, and with scaling.num_workers its workers)."""
    needed = dict(sweep.protocol.run_resources(sweep))
    scaling = sweep.base_config.scaling
    for key, value in worker_resources(sweep.base_config).items():
        if scaling.num_workers:
            needed[key] = needed.get(key, 0.0) + value * scaling.num_workers
    refuse_unschedulable(needed, "one trial", "trial", TRIAL_FIX)


def callbacks(runtime: SweepRuntime, searcher, verbose: bool) -> list[tune.Callback]:
    """The watch on the tracking server, the MLflow runs of the trials, then (unless ``verbose``
    leaves Ray Tune's own tables on) the sweep's view: a live table on a terminal, plain lines otherwise."""
    runs = MlflowTrialRuns(runtime, searcher)
    watch = TrackingWatch(runtime.tracker, runs.names, runtime.sweep.spec.trial.max_failures + 1)
    runs.tracking_up = lambda: not watch.failing
    if verbose:
        return [watch, runs]
    spec, sweep = runtime.sweep.spec, runtime.sweep
    nested = sweep.protocol.runs_per_trial(sweep)
    settings = (runs.names, expected_trials(sweep), search.budget(sweep), spec.metric, spec.mode,
                search.progress_unit(sweep), search.searched_metric(sweep), SCHEDULERS.display(spec.scheduler.kind),
                expected_trials(sweep) * nested if nested > 1 else 0)
    view = LiveSweepTable(*settings, keys=list(sweep.space)) if sys.stdout.isatty() else SweepProgress(*settings)
    runs.say, runs.count_runs = view.notice, view.runs_done if nested > 1 else None
    watch.say = view.notice
    return [watch, runs, view]


def run_config(runtime: SweepRuntime, searcher, verbose: bool) -> tune.RunConfig:
    storage, name = runtime.tune_path.rstrip("/").rsplit("/", 1)
    return tune.RunConfig(name=name, storage_path=storage, verbose=2 if verbose else 0,
                          failure_config=tune.FailureConfig(max_failures=runtime.sweep.spec.trial.max_failures),
                          callbacks=callbacks(runtime, searcher, verbose))


def build_tuner(runtime: SweepRuntime, verbose: bool = False) -> tune.Tuner:
    param_space, tune_config = search.tuner_settings(runtime.sweep, trial_dirname_creator=trial_dirname)
    return tune.Tuner(_trainable(runtime), param_space=param_space, tune_config=tune_config,
                      run_config=run_config(runtime, tune_config.search_alg, verbose))


def output_path(sweep: Sweep) -> str:
    """A new folder for the sweep's outputs, named by the sweep and the second it started; a second
    sweep of that name started in the same second gets ``-2`` (a local folder is created here, so
    two drivers cannot both take one name)."""
    storage = sweep.spec.storage_path
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    stem = f"{storage.rstrip('/')}/{sweep.spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    for attempt in range(1, 1000):
        path = stem if attempt == 1 else f"{stem}-{attempt}"
        if is_uri(path):
            fs, folder = pafs.FileSystem.from_uri(path)
            if fs.get_file_info(folder).type == pafs.FileType.NotFound:
                return path
            continue
        try:
            Path(path).mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ConfigError([("storage_path", f"{storage} already holds 999 sweeps named {sweep.spec.name} from this second")])


def start(sweep: Sweep, tracker: Tracker, path: str) -> SweepRuntime:
    """Open the parent run and record the sweep's state in ``path`` (``output_path``); nothing runs yet."""
    name = path.rsplit("/", 1)[-1]
    params = parent_params(sweep, path, expected_trials(sweep))
    space = {key: param.model_dump(exclude_none=True, by_alias=True) for key, param in sweep.spec.space.items()}
    parent = tracker.create_run(sweep.experiment, name, {SWEEP_TAG: name, KIND_TAG: "sweep"}, params,
                                {"sweep.yaml": sweep.source_text, "space.json": json.dumps(space, indent=1)})
    runtime = SweepRuntime(sweep, path, tracker, parent.run_id)
    runtime.save()
    return runtime


def _quiet_ray(path: str, name: str, verbose: bool) -> None:
    """Unless ``verbose``: what Ray prints in this process goes to the sweep's driver log, and Ray Tune
    uses its legacy output engine, silent at ``verbose=0`` (the current one prints its experiment box
    even there), so the terminal view is the only one; MLflow's retries (a warning each) are not shown
    either: the tracking watch says an outage once. Ray Tune's own resume hint is never shown."""
    logging.getLogger("ray.tune.tune").addFilter(HideRestoreHint())
    if not verbose:
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        route_library_output(driver_log(path, name))


def run_sweep(sweep: Sweep, verbose: bool = False) -> tuple[SweepRuntime, bool]:
    tracker = Tracker.connect(sweep.base_config.tracking_uri)
    for _, cfg in variants(sweep):  # a requested download happens once, here, not in every trial
        preflight.prepare(cfg)
    path = output_path(sweep)
    try:
        _quiet_ray(path, path.rstrip("/").rsplit("/", 1)[-1], verbose)
        ensure_ray(trial_output=verbose)
        _check_trial_fits(sweep)
        check_shared_storage(sweep.spec.storage_path)
    except BaseException:  # refused before anything ran: leave no sweep folder behind
        if not is_uri(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
    runtime = start(sweep, tracker, path)
    folder = shown_path(runtime.path)
    log.info("sweep outputs: %s", folder)
    log.info("resume it with: aepg sweep --resume %s", folder)
    interrupts.on_stop(lambda: close_on_stop(runtime))
    watch_head(lambda address, seconds: head_lost(runtime, address, seconds))
    complete = _fit_and_close(runtime, lambda: build_tuner(runtime, verbose))
    return runtime, complete and confirm(runtime, verbose)


def resume_sweep(path: str, verbose: bool = False) -> tuple[SweepRuntime, bool]:
    """Continue a sweep; its terminal view is the one it started with (Tune restores its callbacks)."""
    runtime = SweepRuntime.load(path)
    runtime.tracker.check_reachable()
    _quiet_ray(runtime.path, runtime.name, verbose)
    ensure_ray(trial_output=verbose)
    if not tune.Tuner.can_restore(path):
        raise ConfigError([("--resume", f"Ray Tune finds no experiment state to restore in {path}")])
    runtime.parent.reopen()
    interrupts.on_stop(lambda: close_on_stop(runtime))
    watch_head(lambda address, seconds: head_lost(runtime, address, seconds))
    complete = _fit_and_close(runtime, lambda: restore_tuner(runtime))
    return runtime, complete and confirm(runtime, verbose)


def restore_tuner(runtime: SweepRuntime) -> tune.Tuner:
    return tune.Tuner.restore(runtime.tune_path, trainable=_trainable(runtime), resume_unfinished=True,
                              resume_errored=False)


def confirm(runtime: SweepRuntime, verbose: bool) -> bool:
    """The confirmation stage, when the sweep has one: its best finished configurations trained
    again on fresh seeds (resumed where an interrupted sweep left it). False when interrupted."""
    settings = runtime.sweep.spec.confirm
    if settings is None:
        return True
    ranked = [e for e in build_report(runtime.tracker, runtime.parent_run_id).entries
              if e.status == "finished" and e.stage == "search"]
    if not ranked:
        return True
    points = [entry.params for entry in ranked[: settings.top_k]]
    stage = SweepRuntime(runtime.sweep.confirmation(points), runtime.path, runtime.tracker, runtime.parent_run_id,
                         "confirm")
    log.info("confirming the best %d configurations on seeds %s", len(points), settings.seeds)
    make = (lambda: restore_tuner(stage)) if tune.Tuner.can_restore(stage.tune_path) else (lambda: build_tuner(stage, verbose))
    return _fit_and_close(stage, make)


def _fit_and_close(runtime: SweepRuntime, make_tuner) -> bool:
    """Build the tuner and fit it; whatever fails on the way leaves the parent run FAILED, never RUNNING."""
    try:
        results = make_tuner().fit()
    except KeyboardInterrupt:  # a second Ctrl-C, which Tune passes on
        runtime.parent.close("KILLED", interrupts.reason())
        raise
    except BaseException as error:
        lost = _tracking_lost(runtime, error)
        if lost is not None:  # nothing can be closed: the resume reopens the runs
            raise lost from error
        lost = _storage_lost(runtime, error)
        if lost is not None:
            _close_open_runs(runtime, "FAILED", str(lost))
            raise lost from error
        runtime.parent.close("FAILED", f"{type(error).__name__}: {error}")
        raise
    finally:
        keep_driver_log(runtime.path, runtime.name)
    _drop_orphans(runtime, {Path(r.path).name.removeprefix(TRIAL_PREFIX) for r in results})
    # Ctrl-C: Tune saved its state, then stopped the running trials, which it counts as terminated
    # although they never ended (their runs are still open): either sign means interrupted.
    cut_short = runtime.open_runs()  # (a stop signal's action may have closed them already)
    complete = (not cut_short and not interrupts.signalled()
                and results.num_terminated + results.num_errors >= expected_trials(runtime.sweep))
    if not complete:  # the trials' runs and the runs nested under them
        _close_open_runs(runtime, "KILLED", interrupts.reason())
    return complete


def _tracking_lost(runtime: SweepRuntime, error: BaseException) -> TrackingUnavailable | None:
    """The error, said plainly, when it is the tracking server that kept failing past MLflow's retries."""
    if isinstance(error, KeyboardInterrupt):
        return None
    trouble = runtime.tracker.trouble()
    if trouble is None:
        return None
    return TrackingUnavailable(
        f"sweep {runtime.name} stopped: the tracking server {runtime.tracker.uri} kept failing ({trouble}) past "
        f"MLflow's retries; its runs show RUNNING until it resumes, and trials that failed on it stay failed; once the "
        f"server answers, continue it with: aepg sweep --resume {shown_path(runtime.path)}")


def _storage_lost(runtime: SweepRuntime, error: BaseException) -> preflight.StorageUnavailable | None:
    """The error, said plainly, when it is the sweep's storage (s3://, gs://) that stopped answering."""
    if not isinstance(error, OSError) or not is_uri(runtime.path):
        return None
    problems = preflight.storage_problems(runtime.path)
    if not problems:
        return None
    return preflight.StorageUnavailable(
        f"sweep {runtime.name} stopped: its storage failed mid-sweep ({problems[0][1]}); what it wrote before stays "
        f"there; once the storage answers, continue it with: aepg sweep --resume {shown_path(runtime.path)}")


def _close_open_runs(runtime: SweepRuntime, status: str, reason: str) -> None:
    """Every run of the sweep still open, then the sweep's own, closed with ``status``."""
    try:
        for open_run in runtime.open_runs():
            interrupted = runtime.tracker.run(open_run.run_id)
            interrupted.set_tags({STATUS_TAG: "interrupted"})
            interrupted.close(status, f"sweep {reason}")
        runtime.parent.close(status, reason)
    except Exception as error:  # the tracking server may be what failed: the resume line matters more
        log.warning("runs not closed (%s: %s)", type(error).__name__, error)


def close_on_stop(runtime: SweepRuntime) -> None:
    """At a stop signal, before Ray Tune's graceful stop (which a SIGKILL may cut short): the sweep's
    open runs closed KILLED, and the line that resumes it said."""
    reason = interrupts.reason()
    _close_open_runs(runtime, "KILLED", reason)
    print(f"\nsweep {reason}; continue it with: aepg sweep --resume {shown_path(runtime.path)}", file=sys.stderr,
          flush=True)


def head_lost(runtime: SweepRuntime, address: str, seconds: float) -> None:
    """The cluster's head is gone, and with it every trial: say so in one line with the resume
    command, close the sweep's runs FAILED, and end now (Ray would end the process silently)."""
    reason = f"lost the Ray head at {address} (no answer for {seconds:.0f} s)"
    _close_open_runs(runtime, "FAILED", reason)
    keep_driver_log(runtime.path, runtime.name)
    stop_live()  # the live table hides the cursor while it draws
    print(f"\naepg: sweep {reason}; its trials ended with it. On a running cluster, continue it with: "
          f"aepg sweep --resume {shown_path(runtime.path)}", file=sys.stderr, flush=True)
    os._exit(1)


def _drop_orphans(runtime: SweepRuntime, trial_ids: set[str]) -> None:
    """Delete child runs of trials the sweep does not know: a driver killed between opening a
    trial's run and saving Tune's state leaves one, and the restored sweep samples anew."""
    for child in runtime.children():
        if child.tags.get(TRIAL_TAG) not in trial_ids:
            log.warning("deleting MLflow run %s of trial %s, which the restored sweep never recorded",
                        child.run_id, child.tags.get(TRIAL_TAG))
            runtime.tracker.run(child.run_id).delete()


def trial_dirname(trial) -> str:
    """Trial folders named by trial id alone, so results map back to MLflow runs."""
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def finalize(runtime: SweepRuntime) -> SweepReport:
    """Leaderboard, best config, paper table and plots: into the sweep folder and the parent run,
    which ends FINISHED (FAILED when no trial finished, or when the report cannot be written)."""
    try:
        report = build_report(runtime.tracker, runtime.parent_run_id)
        table = paper_table(runtime.tracker, [runtime.parent_run_id])
        fs, folder = pafs.FileSystem.from_uri(runtime.path)
        for name, text in report_texts(report, table).items():
            with fs.open_output_stream(f"{folder}/{name}") as out:
                out.write(text.encode())
        publish(runtime.tracker, runtime.parent_run_id, report, table)
    except BaseException as error:
        runtime.parent.close("FAILED", f"report: {type(error).__name__}: {error}")
        raise
    if report.best is None:
        runtime.parent.close("FAILED", nothing_finished(runtime))
    else:
        runtime.parent.close("FINISHED")
    return report


def nothing_finished(runtime: SweepRuntime) -> str:
    """Why a sweep has no result, in one line: how its trials ended, and the first failure's reason."""
    children = runtime.children()
    ended = Counter(child.tags.get(STATUS_TAG, "unknown") for child in children)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(ended.items())) or "no trial ran"
    reasons = [child.tags[schema.FAILURE_TAG] for child in children if child.tags.get(schema.FAILURE_TAG)]
    return f"no trial finished ({counts})" + (f"; first failure: {reasons[0]}" if reasons else "")
