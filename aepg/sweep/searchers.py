"""The search algorithms a sweep can use, one catalogue entry each (``aepg.catalog.SEARCHERS``):
``search.algorithm`` picks the entry and the entry's config holds its keys. Imports neither Ray
nor Optuna, so ``aepg sweep --dry-run`` stays fast; each builder (``aepg.sweep.search``) returns
Ray Tune's ``(param_space, search_alg, num_samples)`` for a sweep."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from aepg.catalog import SEARCHERS
from aepg.config import EntryConfig

DEFAULT_SEARCHER = "tpe"


class SearchSettings(EntryConfig):
    """What every search algorithm's settings hold; ``algorithm`` picks the entry."""

    algorithm: str = DEFAULT_SEARCHER
    max_concurrent: int = Field(2, ge=1)
    """Trials running at once."""

    def trials(self, sweep) -> int:
        """How many trials the sweep runs."""
        raise NotImplementedError

    def problems(self, sweep) -> list[tuple[str, str]]:
        """(sweep-file key, message) for what this algorithm cannot search."""
        return []


class SampledSearch(SearchSettings):
    """Optuna samplers through Ray Tune: one configuration per trial, define-by-run, seeded."""

    seed: int = 0
    num_trials: int = Field(8, ge=1)
    """Trials to sample."""

    def trials(self, sweep) -> int:
        return self.num_trials

    def problems(self, sweep) -> list[tuple[str, str]]:
        if sweep.spec.seeds and len(sweep.spec.seeds) > 1 and sweep.spec.scheduler.fidelity != "seeds":
            return [("seeds", f"several seeds need search.algorithm: grid ({self.algorithm} samples one config per "
                     "trial), or scheduler.fidelity: seeds to train each sampled config on them")]
        return []

    sampler_class: ClassVar[str] = ""
    """The Optuna sampler's class name in ``optuna.samplers``."""

    def sampler_settings(self) -> dict[str, object]:
        """Every argument the sampler is built with, explicit so that a change of Optuna's defaults
        cannot change a rerun's search (the parent run logs them)."""
        return {"seed": self.seed}

    def sampler(self):
        import optuna

        return getattr(optuna.samplers, self.sampler_class)(**self.sampler_settings())


@SEARCHERS.register("tpe", builder="aepg.sweep.search:optuna_search", display="TPE")
class TPESearch(SampledSearch):
    """Optuna's TPE; concurrent trials are spread by the constant-liar heuristic."""

    algorithm: Literal["tpe"] = "tpe"
    sampler_class: ClassVar[str] = "TPESampler"
    startup_trials: int = Field(10, ge=1)
    """Trials sampled at random before the model of good configurations takes over (Optuna's
    n_startup_trials)."""
    multivariate: bool = True
    """Model the searched keys jointly (Optuna 5's default; false: one model per key, Optuna 4's)."""

    def sampler_settings(self) -> dict[str, object]:
        return {"seed": self.seed, "n_startup_trials": self.startup_trials, "multivariate": self.multivariate,
                "constant_liar": self.max_concurrent > 1}


@SEARCHERS.register("nsga2", builder="aepg.sweep.search:optuna_search", display="NSGA-II")
class NSGAIISearch(SampledSearch):
    """Optuna's NSGA-II, the evolutionary sampler for trade-offs (``trade_off``): each generation
    of ``population_size`` configurations is bred from the best non-dominated ones before it."""

    algorithm: Literal["nsga2"] = "nsga2"
    sampler_class: ClassVar[str] = "NSGAIISampler"
    population_size: int = Field(8, ge=2)
    """Configurations per generation (Optuna's default is 50, too many for most sweeps)."""

    def sampler_settings(self) -> dict[str, object]:
        return {"seed": self.seed, "population_size": self.population_size}

    def sampler(self):
        from aepg.sweep.samplers import PicklableNSGAII  # Ray saves the searcher, and its sampler, by pickling

        return PicklableNSGAII(**self.sampler_settings())


@SEARCHERS.register("random", builder="aepg.sweep.search:optuna_search", display="random")
class RandomSearch(SampledSearch):
    """Optuna's random sampler."""

    algorithm: Literal["random"] = "random"
    sampler_class: ClassVar[str] = "RandomSampler"


@SEARCHERS.register("grid", builder="aepg.sweep.search:grid_search", display="grid", traits=("grid",))
class GridSearch(SearchSettings):
    """Every combination of the choices (inactive keys dropped), once per seed."""

    algorithm: Literal["grid"] = "grid"

    def trials(self, sweep) -> int:
        return len(sweep.grid())

    def problems(self, sweep) -> list[tuple[str, str]]:
        return [(f"space.{key}", "grid search takes choice parameters only")
                for key, param in sweep.space.items() if param.kind != "choice"]
