"""The plugin's catalogue entries (the data set's in ``folder.py``), a sweep protocol among them. This module imports neither torch nor Ray, so ``aepg`` still
validates a config fast; the method's and the scheduler's modules are imported only when a run or a
sweep builds them."""

from typing import ClassVar, Literal

from pydantic import Field

from aepg.catalog import METHODS, OBJECTIVES, PARTS, PROTOCOLS, SCHEDULERS, SCHEDULES, SEARCHERS
from aepg.config import MethodConfig, ObjectiveConfig, PartConfig, ScheduleConfig
from aepg.sweep.protocols.plain import PlainProtocol
from aepg.sweep.schedulers import SchedulerSettings
from aepg.sweep.searchers import SampledSearch
from aepg_example_plugin.folder import ImageFolder  # noqa: F401 (registers the image-folder data set)


@OBJECTIVES.register("gce", display="GCE")
class GeneralisedCrossEntropy(ObjectiveConfig):
    """Generalised cross-entropy (Zhang & Sabuncu, 2018): (1 - p_y^q) / q, CE as q -> 0, MAE at q = 1."""

    kind: Literal["gce"] = "gce"
    q: float = Field(0.7, gt=0, le=1)
    """The exponent."""

    def per_sample(self, x):
        return (1.0 - (self.q * x.log_p_y).exp()) / self.q


@SCHEDULES.register("two_phase")
class TwoPhase(ScheduleConfig):
    """Cross-entropy, then EPG: a_t = 1 until ``switch`` of the task's steps, then 0."""

    kind: Literal["two_phase"] = "two_phase"
    switch: float = Field(0.5, ge=0, le=1)
    """The fraction of the steps after which the loss is EPG alone."""

    def a_t(self, progress) -> float:
        return 1.0 if progress.fraction < self.switch else 0.0


@METHODS.register("feature_affine", builder="aepg_example_plugin.affine:build", display="feature affine")
class FeatureAffine(MethodConfig):
    """A learnt per-channel scale and shift of the frozen backbone's pooled features (any backbone)."""

    kind: Literal["feature_affine"] = "feature_affine"
    init_scale: float = Field(1.0, gt=0)
    """The scale's initial value (the shift starts at 0)."""


@SCHEDULERS.register("median", builder="aepg_example_plugin.median:build", display="median stopping")
class MedianStopping(SchedulerSettings):
    """Ray Tune's median stopping rule over tasks: a trial stops when its best running value is worse
    than the median of the other trials' running means after as many tasks."""

    kind: Literal["median"] = "median"
    grace_period: int = Field(1, ge=1)
    """Tasks every trial trains before it may be stopped."""
    min_samples: int = Field(3, ge=1)
    """Trials that must have reported after as many tasks before the rule compares there."""

    stops_early: ClassVar[bool] = True

    def problems(self, sweep):
        return [] if self.fidelity == "tasks" else [("scheduler.fidelity", "the median rule compares trials over tasks")]

    def summary(self):
        return "median stopping over tasks"

    def described(self, metric):
        return f"MedianStoppingRule(grace_period={self.grace_period}, min_samples_required={self.min_samples})"


@PARTS.register("l2_anchor", builder="aepg_example_plugin.anchor:build", display="L2 anchor")
class L2Anchor(PartConfig):
    """An L2 pull towards the trained parameters as they were at the end of the last task (L2-SP's
    penalty with the previous task as the start point): ``weight * sum((theta - theta_prev)^2)``."""

    kind: Literal["l2_anchor"] = "l2_anchor"
    weight: float = Field(1.0, ge=0)
    """The penalty's weight."""


@SEARCHERS.register("qmc", builder="aepg.sweep.search:optuna_search", display="quasi-Monte Carlo")
class QMCSearch(SampledSearch):
    """Optuna's quasi-Monte Carlo sampler: a low-discrepancy sequence spreads the trials evenly."""

    algorithm: Literal["qmc"] = "qmc"
    sampler_class: ClassVar[str] = "QMCSampler"
    scramble: bool = True

    def sampler_settings(self):  # every argument, explicit: the parent run logs them as search.sampler
        return {"seed": self.seed, "scramble": self.scramble}


@PROTOCOLS.register("class_orders", display="class orders")
class ClassOrders(PlainProtocol):
    """Each configuration on several class orders at once, one run per order nested under its run,
    ranked on the mean over the orders: settings that do not hang on one order of the tasks."""

    kind: Literal["class_orders"] = "class_orders"
    orders: list[int] = Field(default_factory=lambda: [0, 1], min_length=2)
    """The values of benchmark.order_seed each configuration trains on."""

    def trial_resources(self, sweep):
        return {"CPU": 0, "memory": 2**20}  # its runs hold the CPUs

    def problems(self, sweep):
        return [("scheduler.kind", "class_orders trains every order to the end")] if sweep.spec.scheduler.stops_early else []

    def train_trial(self, cfg, run, runtime):
        from aepg.sweep.runtime import NestedRun

        jobs = []
        for order in self.orders:
            ordered = cfg.model_copy(update={"benchmark": cfg.benchmark.model_copy(update={"order_seed": order})})
            nested = runtime.nested_run(run, {"example.order": str(order)}, ordered, f"{run.name}@order{order}", "order run")
            jobs.append(NestedRun(ordered, nested, "seed_run/"))
        trained = runtime.train_at_once(jobs)
        failed = [outcome for outcome in trained if isinstance(outcome, BaseException)]
        if failed:
            raise failed[0]
        metric, tasks = runtime.sweep.spec.metric, cfg.benchmark.num_tasks
        mean = sum(outcome.value for outcome in trained) / len(trained)
        run.run.log_metrics({f"final/{metric}": mean})
        run.run.set_tags({"aepg.tasks_done": str(tasks)})
        run.report({"eval/tasks_done": tasks, f"eval/{metric}": mean, f"final/{metric}": mean})
