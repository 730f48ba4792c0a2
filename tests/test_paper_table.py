"""The paper's table from sweep runs: seed grouping, mean +- std, paired differences with a 95%
confidence interval, several configurations per cell, and several sweeps joined."""

import math
import statistics

import pytest
from scipy import stats

from aepg.schema import COMMIT_TAG, VERSION_TAG
from aepg.sweep.table import build_table, method
from aepg.tracking import RunRecord

SEEDS = (0, 1, 2)


def run(kind: str, objective: str, seed: int, last: float, avg: float, lae: bool = False, **params) -> RunRecord:
    p = {"model.method.kind": kind, "objective.kind": objective, "seed": str(seed),
         **({"model.method.parts.lae.enabled": "True"} if lae else {}), **params}
    return RunRecord(f"{'lae-' if lae else ''}{kind}-{objective}-{seed}", "x", "FINISHED", p,
                     {"final/last_accuracy": last, "final/avg_incremental_accuracy": avg}, {})


def test_method_labels_follow_the_paper():
    assert method({"model.method.kind": "lora"}) == "LoRA"
    assert method({"model.method.kind": "lora", "model.method.lae": "True"}) == "LAE"
    assert method({"model.method.kind": "prefix", "model.method.parts.lae.enabled": "True"}) == "LAE (Prefix)"
    assert method({"model.method.kind": "lora", "model.method.parts.lae.enabled": "False"}) == "LoRA"
    assert method({"model.method.kind": "coda"}) == "CODA-Prompt"
    assert method({"model.method.kind": "lora", "model.method.parts.lwf.enabled": "True"}) == "LoRA + LwF"
    assert method({"model.method.kind": "full", "model.method.lr_scale": "0.01"}) == "full fine-tuning (rate x0.01)"


def test_cells_are_seed_statistics_and_differences_are_paired():
    ce_last, aepg_last = [0.70, 0.74, 0.72], [0.73, 0.75, 0.76]
    runs = [run("lora", "ce", s, ce_last[s], 0.8) for s in SEEDS] + \
           [run("lora", "aepg", s, aepg_last[s], 0.82) for s in SEEDS] + \
           [run("lora", "aepg", s, 0.70, 0.80, lae=True) for s in SEEDS] + [run("lora", "ce", 0, 0.69, 0.79, lae=True)]
    table = build_table([("imagenet-r, 10 tasks", runs)])
    assert table.rows == ["LoRA", "LAE"] and table.columns == ["CE", "aEPG"] and table.baseline == "CE"
    records = {(r["row"], r["column"], r["metric"]): r for r in table.records()}
    cell = records[("LoRA", "CE", "last_accuracy")]
    assert cell["mean"] == pytest.approx(statistics.mean(ce_last)) and cell["std"] == pytest.approx(statistics.stdev(ce_last))
    assert cell["seeds"] == 3
    diffs = [a - c for a, c in zip(aepg_last, ce_last)]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    difference = records[("LoRA", "aEPG - CE", "last_accuracy")]
    assert difference["mean"] == pytest.approx(statistics.mean(diffs)) and difference["ci95_half_width"] == pytest.approx(half)
    # LAE has one CE seed: its difference pairs that seed only, and has no interval.
    assert records[("LAE", "aEPG - CE", "last_accuracy")]["seeds"] == 1
    assert records[("LAE", "aEPG - CE", "last_accuracy")]["ci95_half_width"] is None
    markdown = table.markdown()
    assert markdown.splitlines()[0] == ("| method | CE last | CE avg inc | aEPG last | aEPG avg inc | aEPG - CE last "
                                        "| aEPG - CE avg inc |")
    assert (f"| LoRA | 72.0 ± 2.0, n=3 | 80.0 ± 0.0, n=3 | 74.7 ± 1.5, n=3 | 82.0 ± 0.0, n=3 | "
            f"+2.7 [{100 * (statistics.mean(diffs) - half):+.1f}, {100 * (statistics.mean(diffs) + half):+.1f}], "
            "not separated | +2.0 [+2.0, +2.0], aEPG higher |") in markdown
    assert "mean ± std over n seeds" in markdown and "paired over the seeds both have" in markdown
    latex = table.latex()
    assert latex.startswith(r"\begin{tabular}{lcccccc}") and r"72.0 $\pm$ 2.0" in latex
    assert table.csv().splitlines()[0] == "group,row,column,metric,mean,std,ci95_half_width,seeds,runs"
    # Each cell names the runs (seed by seed) whose manifest.json says what made its numbers.
    assert records[("LoRA", "CE", "last_accuracy")]["runs"] == "lora-ce-0 lora-ce-1 lora-ce-2"
    assert "- LAE / CE: seed 0 lae-lora-ce-0\n" in markdown + "\n"
    assert "- LoRA / aEPG: seed 0 lora-aepg-0, seed 1 lora-aepg-1, seed 2 lora-aepg-2" in markdown


def test_a_cell_with_several_configurations_shows_the_best_and_says_so():
    runs = [run("lora", "ce", s, 0.6, 0.7, **{"train.lr": "0.001"}) for s in SEEDS] + \
           [run("lora", "ce", s, 0.8, 0.9, **{"train.lr": "0.0003"}) for s in SEEDS] + \
           [run("lora", "aepg", s, 0.85, 0.9) for s in SEEDS]
    table = build_table([("digits, 5 tasks", runs)], rank_metric="last_accuracy")
    records = {(r["row"], r["column"], r["metric"]): r for r in table.records()}
    assert records[("LoRA", "CE", "last_accuracy")]["mean"] == pytest.approx(0.8)
    assert "80.0 ± 0.0, n=3, best of 2" in table.markdown() and "'best of k': the best of k" in table.markdown()


def test_one_seed_has_no_spread_and_differences_pair_only_the_compared_key():
    """The best CE configuration (lr 1e-3) is not what aEPG ran (lr 3e-4): the difference pairs aEPG
    with the CE run at its own lr, never the best CE with the best aEPG."""
    runs = [run("lora", "ce", 0, 0.80, 0.9, **{"train.lr": "0.001"}), run("lora", "ce", 0, 0.60, 0.7, **{"train.lr": "0.0003"}),
            run("lora", "aepg", 0, 0.70, 0.8, **{"train.lr": "0.0003", "annealing.tau": "6.0"})]
    table = build_table([("digits, 5 tasks", runs)])
    records = {(r["row"], r["column"], r["metric"]): r for r in table.records()}
    assert records[("LoRA", "aEPG - CE", "last_accuracy")]["mean"] == pytest.approx(0.70 - 0.60)
    markdown = table.markdown()
    assert "| LoRA | 80.0, best of 2 | 90.0, best of 2 | 70.0 | 80.0 | +10.0 | +10.0 |" in markdown
    assert "±" not in markdown.split("\n\n")[0] and "one seed per cell" in markdown and "confidence" not in markdown
    alone = build_table([("digits, 5 tasks", runs[:1] + runs[2:])])  # no CE run shares aEPG's lr
    assert alone.markdown().splitlines()[2].endswith("| - | - |")


def test_several_sweeps_join_as_column_groups():
    first = [run("lora", o, s, 0.7, 0.8) for o in ("ce", "aepg") for s in SEEDS]
    second = [run("lora", o, s, 0.6, 0.7) for o in ("ce", "aepg") for s in SEEDS]
    table = build_table([("imagenet-r, 10 tasks", first), ("cub200, 10 tasks", second)])
    header = table.markdown().splitlines()[0]
    assert header.count("imagenet-r, 10 tasks CE last") == 1 and header.count("cub200, 10 tasks aEPG - CE avg inc") == 1
    assert len({r["group"] for r in table.records()}) == 2


def test_the_newer_methods_have_rows_and_the_note_names_checkpoint_order_and_split():
    where = {"model.backbone": "vit_base_patch16_224.augreg_in21k_ft_in1k", "benchmark.order_seed": "0",
             "benchmark.split_seed": "0"}
    kinds = ["ranpac", "lora", "inflora", "full", "sd_lora", "coda"]
    runs = [run(kind, objective, 0, 0.5, 0.6, **where) for kind in kinds for objective in ("ce", "aepg")]
    runs.append(run("lora", "ce", 0, 0.5, 0.6, lae=True, **where))
    for made_with in runs:  # aepg's version and commit, as launch tags every run
        made_with.tags.update({VERSION_TAG: "0.1.0", COMMIT_TAG: "1a2b3c4"})
    runs[0].tags[COMMIT_TAG] = "1a2b3c4-dirty"
    for logged_since_the_key_moved in runs[::2]:
        params = logged_since_the_key_moved.params
        params["benchmark.dataset.split_seed"] = params.pop("benchmark.split_seed")
    table = build_table([("imagenet-r, 10 tasks", runs)])
    assert table.rows == ["full fine-tuning", "LoRA", "LAE", "CODA-Prompt", "InfLoRA", "RanPAC", "SD-LoRA"]
    assert ("Runs: aepg 0.1.0 at 1a2b3c4-dirty, 0.1.0 at 1a2b3c4; backbone vit_base_patch16_224.augreg_in21k_ft_in1k; "
            "class order seed 0; split seed 0." in table.markdown())


def test_a_confirmed_configuration_counts_on_its_confirmation_seeds_alone():
    """Seed sweeps: a configuration the confirmation trained again is tabled on the confirmation's
    fresh seeds, not on those mixed with the search's seeds that chose it; the others keep theirs."""
    from aepg.sweep.report import table_runs

    def trial(run_id: str, config: str, stage: str = "search", parent: str = "sweep") -> RunRecord:
        tags = {"aepg.config_id": config, "mlflow.parentRunId": parent, **({"aepg.stage": stage} if stage else {})}
        return RunRecord(run_id, run_id, "FINISHED", {}, {}, tags)

    searched_a, searched_b, confirmed_a = trial("A", "A"), trial("B", "B"), trial("A'", "A", "confirm")
    seed_runs = [trial("A@s0", "A", "", "A"), trial("A@s1", "A", "", "A"), trial("B@s0", "B", "", "B"),
                 trial("A'@s100", "A", "", "A'"), trial("A'@s101", "A", "", "A'"), trial("X@s0", "X", "", "X")]
    kept = table_runs([searched_a, searched_b, confirmed_a], seed_runs)
    assert sorted(r.run_id for r in kept) == ["A'@s100", "A'@s101", "B@s0"]
    # Without a confirmation every configuration counts on its search seeds; a run under no finished
    # configuration (X, stopped) never counts, and the configurations' own runs (their mean) neither.
    assert sorted(r.run_id for r in table_runs([searched_a, searched_b], seed_runs)) == ["A@s0", "A@s1", "B@s0"]
