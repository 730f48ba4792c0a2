"""The production stack, for real: sweep storage on an S3-compatible server (moto's server mode,
with IAM checks on, so wrong credentials are refused), and MLflow on PostgreSQL with its artifacts
on that server, restarted mid-sweep. Each component is skipped with one line where it cannot start."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (CONFIGS, TINY_BASE, mlflow_server, run_aepg, start_aepg, through_a_fault, wait_until,
                      write_sweep)
from mlflow import MlflowClient

from aepg.ray_setup import free_port

pytestmark = pytest.mark.ray

BUCKET = "aepg-bucket"


@dataclass
class S3Server:
    url: str
    env: dict
    """AWS_ENDPOINT_URL and the credentials of a user allowed everything, as aepg reads them."""
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@contextmanager
def s3_server(authenticated: bool = True):
    """moto's S3 server on 127.0.0.1; ``authenticated``: with IAM authentication on after its first 4
    requests, which create a user, its access key and a policy allowing everything (moto then
    refuses presigned URLs, which MLflow's artifact downloads use, so a tracking server's store is
    one without). The bucket ``BUCKET`` exists."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.skip("moto's S3 server is not installed (pip install -e '.[test]')")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[test]')")
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                               env={**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "4"} if authenticated else {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(url, {}, process)

    def answers() -> bool:
        try:
            return requests.get(f"{url}/moto-api/", timeout=2).status_code < 500
        except requests.RequestException:
            return False

    try:
        wait_until(answers, "moto's S3 server", process, timeout=60)
        setup = {"endpoint_url": url, "region_name": "us-east-1"}
        key = {"AccessKeyId": "aepg", "SecretAccessKey": "aepg"}
        if authenticated:
            iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **setup)
            iam.create_user(UserName="aepg")
            key = iam.create_access_key(UserName="aepg")["AccessKey"]
            everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            policy = iam.create_policy(PolicyName="everything", PolicyDocument=json.dumps(everything))["Policy"]["Arn"]
            iam.attach_user_policy(UserName="aepg", PolicyArn=policy)
        credentials = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        boto3.client("s3", **credentials, **setup).create_bucket(Bucket=BUCKET)
        server.env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                      "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
        yield server
    finally:
        server.stop()


def bucket_keys(server: S3Server, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def sweep_file(folder: Path, **changes) -> str:
    """Two configurations (a grid), two tasks each."""
    base = {**TINY_BASE, "benchmark": {**TINY_BASE["benchmark"], "num_tasks": 2}}
    spec = {"base_overrides": base, "space": {"train.lr": {"choice": [0.0003, 0.001]}},
            "search": {"algorithm": "grid", "max_concurrent": 2}, "scheduler": {"kind": "none"}, **changes}
    return write_sweep(folder, **spec)


def finals(db: Path) -> dict[str, dict[str, float]]:
    """Each trial's ``final/`` metrics, by the trial's configuration."""
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("aepg-digits")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`aepg.config_id` != ''")
    return {r.data.tags["aepg.config_id"]: {k: v for k, v in r.data.metrics.items() if k.startswith("final/")}
            for r in runs}


def test_storage_on_s3_that_cannot_be_written_is_one_line_before_any_run(tmp_path):
    """A missing bucket, refused credentials and a server that is gone: each one line naming the
    storage and the cause, before any MLflow run or Ray instance starts."""
    with s3_server() as server:
        path = sweep_file(tmp_path)
        missing = run_aepg(["sweep", path, "storage_path=s3://no-such-bucket/sweeps"], cwd=tmp_path, env=server.env)
        wrong = run_aepg(["sweep", path, f"storage_path=s3://{BUCKET}/sweeps"], cwd=tmp_path,
                         env={**server.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
        server.stop()
        gone = run_aepg(["train", str(CONFIGS / "digits.yaml"), f"storage_path=s3://{BUCKET}/runs"], cwd=tmp_path,
                        env=server.env)
    expected = {missing: "its bucket does not exist: create it first",
                wrong: "the server refused the credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                gone: "its server does not answer"}
    for result, cause in expected.items():
        said = result.stdout + result.stderr
        assert result.returncode == 2 and "Traceback" not in said, said[-3000:]
        assert re.search(rf"storage_path: cannot write to s3://\S+ \(endpoint {server.url}\): {re.escape(cause)}$",
                         said, re.M), said[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "aepg_sweeps").exists(), "nothing started"


@pytest.mark.production
def test_a_sweep_on_s3_stopped_mid_trial_resumes_to_the_metrics_of_an_uninterrupted_one(tmp_path):
    """Two trials with their storage on the S3 server: one sweep uninterrupted, one stopped by
    SIGTERM (to its process group, its own local Ray included) once a task is done and resumed
    from the bucket; both end on the same final metrics, and the bucket holds each sweep's state,
    checkpoints, best.yaml, leaderboard and driver log."""
    with s3_server() as server:
        whole, cut = tmp_path / "whole", tmp_path / "cut"
        for folder in (whole, cut):
            folder.mkdir()
        done = run_aepg(["sweep", sweep_file(whole), f"storage_path=s3://{BUCKET}/whole"], cwd=whole, env=server.env)
        assert done.returncode == 0, done.stderr[-3000:]

        driver = start_aepg(["sweep", sweep_file(cut), f"storage_path=s3://{BUCKET}/cut"], cut, server.env,
                            own_group=True)
        output = through_a_fault(driver, lambda: any(key.endswith(".pt") for key in bucket_keys(server, "cut/")),
                                 "a checkpoint in the bucket", lambda: os.killpg(driver.pid, signal.SIGTERM), cut)
        assert driver.returncode == 143, output[-3000:]
        (folder,) = re.findall(rf"continue it with: aepg sweep --resume (s3://{BUCKET}/cut/tiny-\S+)", output)
        assert len(finals(cut / "mlflow.db")) < 2 or not all(finals(cut / "mlflow.db").values()), "stopped too late"
        resumed = run_aepg(["sweep", "--resume", folder], cwd=cut, env=server.env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        expected = finals(whole / "mlflow.db")
        assert len(expected) == 2 and all(expected.values()) and finals(cut / "mlflow.db") == expected

        stored = {key.split("/", 2)[2] for key in bucket_keys(server, folder.removeprefix(f"s3://{BUCKET}/") + "/")}
        assert {"best.yaml", "leaderboard.md", "driver.log", "aepg_sweep.json"} <= stored, sorted(stored)[:40]
        assert any(key.startswith("runs/") and key.endswith(".pt") for key in stored)


@pytest.mark.production
def test_an_s3_server_that_goes_away_mid_sweep_ends_it_in_one_line_with_its_runs_closed(tmp_path):
    """The S3 server killed once a checkpoint is in: the sweep ends with one line naming the storage,
    its cause and the resume command, no traceback, and no MLflow run left RUNNING."""
    with s3_server() as server:
        driver = start_aepg(["sweep", sweep_file(tmp_path), f"storage_path=s3://{BUCKET}/gone"], tmp_path, server.env)
        output = through_a_fault(driver, lambda: any(key.endswith(".pt") for key in bucket_keys(server, "gone/")),
                                 "a checkpoint in the bucket", server.stop, tmp_path)
    assert driver.returncode == 1 and "Traceback" not in output, output[-3000:]
    said = [line for line in output.splitlines() if "storage failed mid-sweep" in line]
    assert len(said) == 1 and re.fullmatch(
        rf"aepg: sweep tiny-\S+ stopped: its storage failed mid-sweep \(cannot write to s3://{BUCKET}/gone/tiny-\S+ "
        rf"\(endpoint {server.url}\): its server does not answer\); what it wrote before stays there; once the storage "
        rf"answers, continue it with: aepg sweep --resume s3://{BUCKET}/gone/tiny-\S+", said[0]), output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


@contextmanager
def postgresql():
    """A PostgreSQL server in a temp folder (``initdb``, ``pg_ctl``) on 127.0.0.1, with a database
    ``mlflow``; yields its URI. PostgreSQL refuses to run as root: as root it runs as ``postgres``."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[server]')")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = str(found[-1]) if found else shutil.which("initdb")
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    tools, root = Path(initdb).resolve().parent, os.geteuid() == 0
    as_owner = ["runuser", "-u", "postgres", "--"] if root else []
    folder = Path(tempfile.mkdtemp(prefix="aepg-pg-"))
    data, port = folder / "data", free_port()

    def run(*args) -> None:
        subprocess.run([*as_owner, *map(str, args)], check=True, capture_output=True, text=True, timeout=120)

    try:
        if root:
            shutil.chown(folder, "postgres")
        run(tools / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        run(tools / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        run(tools / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow")
    except (subprocess.CalledProcessError, LookupError, OSError) as error:
        shutil.rmtree(folder, ignore_errors=True)
        said = getattr(error, "stderr", "") or str(error)
        pytest.skip(f"PostgreSQL does not start here: {said.strip().splitlines()[-1] if said.strip() else error}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_owner, str(tools / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def artifact_env(server: S3Server) -> dict:
    """What a tracking server needs to keep artifacts on the S3 server."""
    return {**server.env, "MLFLOW_S3_ENDPOINT_URL": server.url}


def test_mlflow_on_a_fresh_postgresql_migrates_its_schema_and_keeps_artifacts_on_s3(tmp_path):
    """`mlflow server` on a new database creates MLflow's schema at its latest migration; a run's
    artifact goes through the server into the bucket."""
    import psycopg
    from mlflow.store.db.utils import _get_latest_schema_revision

    with s3_server(authenticated=False) as s3, postgresql() as database, \
            mlflow_server(database, tmp_path / "server.log", "--artifacts-destination", f"s3://{BUCKET}/mlflow",
                          env=artifact_env(s3)) as url:
        with psycopg.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT version_num FROM alembic_version")
            assert cursor.fetchall() == [(_get_latest_schema_revision(),)]
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("stack"))
        client.log_text(run.info.run_id, "kept", "note.txt")
        assert [key for key in bucket_keys(s3, "mlflow/") if key.endswith(f"{run.info.run_id}/artifacts/note.txt")]
        downloaded = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))  # through presigned URLs
        assert Path(downloaded).read_text() == "kept"


@pytest.mark.production
def test_a_paired_sweep_on_postgresql_loses_no_point_through_a_restart_of_its_tracking_server(tmp_path):
    """Two configurations, CE against aEPG on two seeds, four arm runs training at once, logging to
    MLflow on PostgreSQL (artifacts on S3). The tracking server is stopped once the first evaluation
    point is in and started again 20 s later: the terminal says when it failed and when it came back,
    every arm run finishes, and each holds exactly one point per task of every eval/ metric."""
    path = write_sweep(tmp_path, base_overrides={**TINY_BASE, "benchmark": {**TINY_BASE["benchmark"], "num_tasks": 2}},
                       space={"train.lr": {"choice": [0.0003, 0.001]}}, compare={"objective.kind": ["ce", "aepg"]},
                       seeds=[0, 1], search={"algorithm": "grid", "max_concurrent": 2},
                       scheduler={"kind": "none", "fidelity": "seeds"}, trial={"cpus": 0.5, "max_failures": 1})
    port = free_port()
    with s3_server(authenticated=False) as s3, postgresql() as database:
        def server():
            return mlflow_server(database, tmp_path / "server.log", "--artifacts-destination",
                                 f"s3://{BUCKET}/mlflow", env=artifact_env(s3), port=port)

        first = server()
        url = first.__enter__()
        try:
            driver = start_aepg(["sweep", path], tmp_path, {"MLFLOW_TRACKING_URI": url})
            client = MlflowClient(url)

            def evaluated() -> bool:
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
                return any("eval/accuracy" in run.data.metrics for run in runs)

            wait_until(evaluated, "a first evaluation point", driver, timeout=600)
        finally:
            first.__exit__(None, None, None)
        try:
            time.sleep(20)
            with server():
                output, _ = driver.communicate(timeout=900)
                runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
                histories = {(run.info.run_id, key): [m.step for m in client.get_metric_history(run.info.run_id, key)]
                             for run in runs if "aepg.arm" in run.data.tags
                             for key in ("eval/accuracy", "eval/avg_incremental_accuracy", "eval/bwt")}
        finally:
            driver.kill()
    (tmp_path / "terminal.txt").write_text(output)
    assert driver.returncode == 0, output[-3000:]
    assert re.search(rf"tracking server {re.escape(url)} is failing \(connection refused\) since \d\d:\d\d:\d\d", output), \
        output[-3000:]
    assert re.search(rf"tracking server {re.escape(url)} answers again, after 0:\d\d failing", output), output[-3000:]
    arms = [run for run in runs if "aepg.arm" in run.data.tags]
    assert len(arms) == 8 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.tags["aepg.tasks_done"] for run in arms} == {"2"}
    for (run_id, key), steps in histories.items():
        assert steps == ([2] if key == "eval/bwt" else [1, 2]), (run_id, key, steps)


def test_the_tracking_watch_says_when_a_real_server_fails_and_when_it_answers_again(tmp_path):
    """The driver's watch on the tracking server, on a real `mlflow server` stopped and started again
    on its port: one line when it fails (its address and what fails), one when it is back; nothing
    while it answers."""
    from aepg.sweep.tracking_watch import TrackingWatch
    from aepg.tracking import Tracker

    port, said = free_port(), []
    with mlflow_server(tmp_path / "mlflow.db", tmp_path / "server.log", port=port) as url:
        watch = TrackingWatch(Tracker(url), {}, attempts=2)
        watch.say = said.append
        watch.probe()
        assert said == [] and not watch.failing
    watch.probe()
    watch.probe()  # said once, not at every probe
    assert watch.failing and len(said) == 1
    assert re.fullmatch(rf"tracking server {re.escape(url)} is failing \(connection refused\) since \d\d:\d\d:\d\d; "
                        r"the trials' MLflow requests retry for about 4:04", said[0])
    with mlflow_server(tmp_path / "mlflow.db", tmp_path / "server.log", port=port):
        # A server just started on a busy machine may take longer than a probe waits for its first
        # search: the watch then says it is back at a later probe, once.
        wait_until(lambda: watch.probe() or not watch.failing, "the watch to see the server back", timeout=60)
    assert len(said) == 2 and re.fullmatch(rf"tracking server {re.escape(url)} answers again, after \d:\d\d failing",
                                           said[1]), said


def test_mlflow_retries_a_request_for_the_window_the_watch_states(monkeypatch):
    """The window is urllib3's backoff summed: none before the first retry, then factor x 2^(n-1) s
    capped at 120 s (defaults: 7 retries, factor 2: 4 + 8 + 16 + 32 + 64 + 120 s)."""
    from aepg.tracking import retry_window_s

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    assert retry_window_s() == 244.0
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    assert retry_window_s() == 2.0 + 4.0


@pytest.mark.production
def test_a_tracking_server_that_never_comes_back_ends_the_sweep_in_plain_lines(tmp_path):
    """The tracking server stopped for good mid-sweep, MLflow's retries cut to seconds: the terminal
    says when it failed, the trial Tune retries into the outage, the outage still on at the end, and
    a last line with the resume command; no traceback, no retry warnings."""
    path = write_sweep(tmp_path, space={"train.lr": {"choice": [0.0003, 0.001]}}, scheduler={"kind": "none"},
                       search={"algorithm": "grid", "max_concurrent": 2}, trial={"cpus": 1, "max_failures": 1})
    server = mlflow_server(tmp_path / "mlflow.db", tmp_path / "server.log")
    url = server.__enter__()
    try:
        driver = start_aepg(["sweep", path], tmp_path, {"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"})
        client = MlflowClient(url)

        def a_task_done() -> bool:
            experiment = client.get_experiment_by_name("aepg-digits")
            return bool(experiment) and any(int(r.data.tags.get("aepg.tasks_done", 0)) >= 1
                                            for r in client.search_runs([experiment.experiment_id]))

        wait_until(a_task_done, "a trial's first task", driver, timeout=600)
    finally:
        server.__exit__(None, None, None)
    try:
        output, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
    (tmp_path / "terminal.txt").write_text(output)
    assert driver.returncode == 1 and "Traceback" not in output and "Retrying (Retry(" not in output, output[-3000:]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    assert re.fullmatch(rf"tracking server {re.escape(url)} is failing \(connection refused\) since \d\d:\d\d:\d\d; the "
                        r"trials' MLflow requests retry for about 0:04", next(l for l in lines if " is failing " in l))
    assert any(re.fullmatch(r"t0[12] failed while the tracking server is failing; Tune retries it now, into the outage "
                            r"\(attempt 2 of 2\)", line) for line in lines), output[-3000:]
    assert any(line.startswith(f"the sweep ends with the tracking server {url} still failing") for line in lines)
    assert re.fullmatch(rf"aepg: sweep tiny-\S+ stopped: the tracking server {re.escape(url)} kept failing \(connection "
                        r"refused\) past MLflow's retries; .*; once the server answers, continue it with: aepg sweep "
                        r"--resume aepg_sweeps/tiny-\S+", lines[-1]), output[-3000:]
