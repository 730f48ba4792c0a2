"""The bad-input corpus (tests/bad_inputs/*.yaml): every case exits with code 2 through the real
console script, names the key or file in at most two lines, prints no traceback, and writes
nothing in the folder it runs in."""

import base64
import os
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, run_aepg

CASES_DIR = Path(__file__).with_name("bad_inputs")


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            cases.append({**case, "source": path.name})
    return cases


CASES = load_cases()


def fill(text: str) -> str:
    return text.replace("$DIGITS", str(CONFIGS / "digits.yaml")).replace("$CONFIGS", str(CONFIGS))


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def test_the_corpus_is_large_and_ids_are_unique():
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 80 and len(set(ids)) == len(ids)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One backbone-facts cache for the corpus, outside the folders the cases run in."""
    return tmp_path_factory.mktemp("aepg-cache")


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_is_refused_in_one_clear_line(case, tmp_path, cache):
    for name, content in (case.get("files") or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_bytes(base64.b64decode(content["base64"]))
        else:
            path.write_text(fill(content))
    before = snapshot(tmp_path)
    env = {"AEPG_CACHE": str(cache), "AEPG_DATA": str(tmp_path / "default-data"),
           **{key: fill(str(value)) for key, value in (case.get("env") or {}).items()}}
    result = run_aepg([fill(str(arg)) for arg in case["args"]], cwd=tmp_path, env=env, timeout=300)
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{err[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in result.stdout, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("aepg: warning:")]
    assert len(lines) <= 3, err  # a header (or argparse's usage) and one or two lines
    assert fill(case["expect"]) in err, err
    assert snapshot(tmp_path) == before, "the command wrote files"
    assert not os.path.exists(tmp_path / "mlflow.db")
