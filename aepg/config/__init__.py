"""Typed run configuration: YAML files plus dotted ``key=value`` overrides, validated once.

OmegaConf reads the YAML and the overrides (``files``); each layer is read under today's key names
(``renames``) before the layers merge; pydantic checks types, ranges and unknown keys (``sections``,
whose catalogue sections are declared once, ``entries``); ``check_consistency`` checks what spans
several keys. Every problem becomes a ``ConfigError`` naming the dotted key, before any compute.
Nothing here imports torch or timm.
"""

from aepg.config.base import (ConfigError, EntryConfig, Section, default_storage, env_path, is_uri,
                              resolve_tracking_uri, shown_path)
from aepg.config.entries import by_kind, chosen_entries, dispatched, entry_keys, pydantic_problems, setting_of
from aepg.config.files import load_config, merge_nested, merge_overrides, read_run_yaml, read_yaml, to_yaml
from aepg.config.renames import current_key, current_value, logged_param, renamed_layer, tag_of
from aepg.config.sections import (
    FLOAT32_MAX,
    WEIGHT_KEYWORDS,
    BenchmarkConfig,
    DatasetConfig,
    LRScheduleConfig,
    MethodConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimizerConfig,
    PartConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    check_consistency,
    fixed_on_resume,
    flatten,
    method_config,
    schedule_config,
    validate,
)

__all__ = [
    "BenchmarkConfig", "ConfigError", "DatasetConfig", "EntryConfig", "FLOAT32_MAX", "LRScheduleConfig", "MethodConfig",
    "ModelConfig", "ObjectiveConfig", "OptimizerConfig", "PartConfig", "RunConfig", "ScheduleConfig", "Section",
    "TrainConfig", "WEIGHT_KEYWORDS", "by_kind", "check_consistency", "chosen_entries", "current_key",
    "current_value", "default_storage", "dispatched", "entry_keys", "env_path", "fixed_on_resume", "flatten",
    "is_uri", "load_config", "logged_param", "merge_nested", "merge_overrides", "method_config",
    "pydantic_problems", "read_run_yaml", "resolve_tracking_uri", "read_yaml", "renamed_layer", "schedule_config", "setting_of", "shown_path",
    "tag_of", "to_yaml", "validate",
]
