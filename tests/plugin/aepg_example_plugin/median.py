"""The median stopping rule's builder, imported only when a sweep builds its scheduler."""

from ray.tune.schedulers import MedianStoppingRule

from aepg.sweep.search import OwnMetric, budget, compared_metric, compared_mode


class MedianOnOwnMetric(OwnMetric, MedianStoppingRule):
    """Ray Tune's median stopping rule, comparing on what aepg compares trials on while they run."""


def build(sweep) -> MedianOnOwnMetric:
    settings = sweep.spec.scheduler
    return MedianOnOwnMetric(time_attr=budget(sweep)[0], metric=compared_metric(sweep), mode=compared_mode(sweep),
                             grace_period=settings.grace_period, min_samples_required=settings.min_samples)
