"""A sweep's folder on disk and its names: the state file ``aepg sweep --resume`` reads, and the
short, readable run names of its trials."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aepg.config import ConfigError, current_key, is_uri


STATE_FILE = "aepg_sweep.json"


def sweep_folder(path: str) -> str:
    """A sweep's output folder as given to ``--resume``: local paths made absolute and checked."""
    if is_uri(path):
        return path.rstrip("/")
    folder = Path(path).expanduser().resolve()
    if folder.is_file():
        raise ConfigError([("--resume", f"{folder} is a file; give the sweep's output folder (e.g. aepg_sweeps/NAME-DATE)")])
    if not folder.is_dir():
        raise ConfigError([("--resume", f"no such folder: {folder}")])
    return str(folder)


def read_state(path: str) -> dict:
    """The state ``aepg sweep`` saved in its folder; ConfigError naming the file when absent or damaged."""
    import pyarrow.fs as pafs

    fs, folder = pafs.FileSystem.from_uri(path if is_uri(path) else Path(path).as_uri())
    where = f"{path}/{STATE_FILE}"
    try:
        with fs.open_input_stream(f"{folder}/{STATE_FILE}") as stream:
            state = json.loads(stream.read())
    except (FileNotFoundError, OSError):
        raise ConfigError([("--resume", f"{path} is not an aepg sweep folder (no {STATE_FILE})")]) from None
    except ValueError as error:
        raise ConfigError([(where, f"is not valid JSON ({error}); the sweep's state is damaged")]) from None
    missing = [k for k in ("spec", "base", "source", "tracking_uri", "parent_run_id") if k not in state] \
        if isinstance(state, dict) else ["everything"]
    if missing:
        raise ConfigError([(where, f"is not an aepg sweep state (missing {missing})")])
    return state


SHORT_NAMES = {"train.lr": "lr", "model.method.rank": "r", "annealing.tau": "tau", "seed": "s", "train.epochs": "ep",
               "train.batch_size": "b", "train.weight_decay": "wd", "model.method.length": "len",
               "model.method.lr_scale": "lrx", "train.prefix_cache": "cache",
               "objective.kind": "objective", "model.method.kind": "method", "annealing.kind": "annealing"}


PART_SWITCH = re.compile(r"^model\.method\.parts\.([^.]+)\.enabled$")


def short_name(key: str) -> str:
    """A searched key as names and narrow tables show it: ``train.lr`` as ``lr``, a part's switch as
    the part (``lwf``), else its last part."""
    key = current_key(key, quiet=True)  # a sweep logged before a rename too
    switch = PART_SWITCH.match(key)
    return SHORT_NAMES.get(key) or (switch.group(1) if switch else key.rsplit(".", 1)[-1])


def compact(value) -> str:
    """A value in a few characters: 3 significant digits, exponents for the very small and large."""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.1e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.3g}"
    return str(value)


def _short(key: str, value) -> str:
    """A searched value as a run name shows it: words as they are, numbers after a short key name."""
    name = short_name(key)
    if isinstance(value, bool):
        return name if value else f"no{name}"
    if isinstance(value, str):
        return value
    return name + compact(value)


def trial_run_name(index: int, params: dict[str, Any], stage: str = "search") -> str:
    """A readable run name that says what differs: ``t03-aepg-cosine-r6-lr3e-4``; a confirmation
    stage's trial says so after its index (``t09-confirm-lr3e-4``), in every view that names it."""
    parts = [f"t{index:02d}", *([stage] if stage != "search" else [])] + [_short(key, value) for key, value in params.items()]
    return re.sub(r"[^A-Za-z0-9.+_-]+", "", "-".join(parts))[:120]
