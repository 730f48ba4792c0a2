"""Parameter-efficient modules for frozen timm backbones: one catalogue entry per method here, one
file per implementation beside it, attached in one call by ``aepg.models.peft.attach.attach_method``.

An entry (``aepg.catalog.METHODS``) is the method's config: its keys with their defaults and
ranges, the checks a backbone must pass (from the backbone's facts, ``aepg.models.facts``, so
the CLI runs them before importing torch) and a lazy reference to its builder,
``build(backbone, cfg, num_tasks) -> MethodModule``. docs/extending.md shows how to add one.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from aepg.catalog import METHODS
from aepg.config import MethodConfig
from aepg.config.renames import old_names

DEFAULT_BLOCKS = [0, 1, 2, 3, 4]
"""The paper's blocks 0-4, as far as the ViT goes."""
DUALPROMPT_GENERAL_BLOCKS = (0, 1)
HF_DEFAULT_TARGETS = {
    "VisionTransformer": ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
    "EfficientNet": ["conv_pw", "conv_pwl"],
}
HF_DEFAULT_BLOCKS = {"VisionTransformer": DEFAULT_BLOCKS}
PACKAGE = "aepg.models.peft"
__getattr__ = old_names(__name__)


class MethodError(ValueError):
    """The PEFT settings do not fit the backbone."""


def adapted_blocks(blocks: list[int] | None, depth: int, default: list[int] | None = DEFAULT_BLOCKS) -> list[int]:
    """The chosen blocks, checked against the depth; unset: ``default`` (None: every block)."""
    if blocks is None:
        return list(range(depth)) if default is None else [b for b in default if b < depth]
    chosen = sorted(set(blocks))
    if any(b >= depth for b in chosen):
        raise MethodError(f"model.method.blocks {chosen} exceed the backbone's {depth} blocks")
    return chosen


def dualprompt_blocks(blocks: list[int]) -> tuple[list[int], list[int]]:
    """(general, expert) blocks: the general prompts take blocks 0-1, the experts the rest."""
    general = [b for b in blocks if b in DUALPROMPT_GENERAL_BLOCKS] or blocks[:1]
    return general, [b for b in blocks if b not in general]


def target_pattern(targets: list[str], blocks: list[int] | None) -> str:
    """A full-match regex over module names: ``blocks.<b>.[...].<target>`` or any ``<target>``."""
    names = "|".join(re.escape(t) for t in targets)
    if blocks is None:
        return rf"^(?:.*\.)?(?:{names})$"
    block_ids = "|".join(str(b) for b in sorted(set(blocks)))
    return rf"^blocks\.(?:{block_ids})\.(?:.*\.)?(?:{names})$"


def check(cfg: MethodConfig, facts: dict, num_tasks: int) -> None:
    """Raise MethodError when the PEFT settings ``cfg`` do not fit the backbone ``facts`` describes."""
    if METHODS.get(cfg.kind).has("vit_only") and not facts["is_vit"]:
        raise MethodError(f"model.method.kind={cfg.kind} needs a timm VisionTransformer, not {facts['family']}")
    cfg.check(facts, num_tasks)


# -- the entries -----------------------------------------------------------------------------------

@METHODS.register("none", display="linear probe")
class LinearProbe(MethodConfig):
    """The head only: no PEFT module."""

    kind: Literal["none"] = "none"

    def first_adapted_block(self, facts: dict) -> int | None:
        return None


@METHODS.register("full", builder=f"{PACKAGE}.full:build_full", display="full fine-tuning")
class FullMethod(MethodConfig):
    """Full fine-tuning: every backbone weight trains with the head, from pretrained or random weights."""

    kind: Literal["full"] = "full"
    batchnorm: Literal["train", "frozen"] = "train"
    """BatchNorm layers use and update batch statistics while training (``train``), or keep the
    backbone's running statistics as every PEFT method does (``frozen``)."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        found = super().problems(cfg)
        if "lae" in self.chosen_parts():
            found.append(("parts.lae", "LAE's online/offline pair averages a PEFT module; it does not wrap full fine-tuning"))
        return found


class BlocksMethod(MethodConfig):
    """A method that adapts chosen ViT blocks."""

    default_blocks: ClassVar[list[int] | None] = DEFAULT_BLOCKS
    blocks: list[int] | None = None
    """Indices of ``blocks.N`` to adapt; default: the method's (blocks 0-4 of a ViT, the paper's, for most;
    every block for InfLoRA, SD-LoRA and RanPAC, as their references), every block of other families."""

    def chosen_blocks(self, depth: int) -> list[int]:
        return adapted_blocks(self.blocks, depth, self.default_blocks)

    def first_adapted_block(self, facts: dict) -> int | None:
        """The first chosen block (on other families than ViTs, with ``blocks`` unset: every block)."""
        if facts["is_vit"]:
            return min(self.chosen_blocks(facts["depth"]), default=0)
        return min(self.blocks, default=0) if self.blocks is not None else 0

    def problems(self, cfg) -> list[tuple[str, str]]:
        found = super().problems(cfg)
        if self.blocks is not None and any(b < 0 for b in self.blocks):
            found.append(("blocks", "block indices must be >= 0"))
        return found

    def check(self, facts: dict, num_tasks: int) -> None:
        if facts["is_vit"]:
            self.chosen_blocks(facts["depth"])

    def active_params(self, facts: dict | None = None) -> dict[str, Any]:
        values = super().active_params(facts)
        if facts.get("is_vit"):
            values["blocks"] = self.chosen_blocks(facts["depth"])
        return values


class LowRankBlocksMethod(BlocksMethod):
    """A method of rank-``rank`` updates on chosen ViT blocks, whose rank cannot exceed the width."""

    rank: int

    def check(self, facts: dict, num_tasks: int) -> None:
        super().check(facts, num_tasks)
        if self.rank > facts["embed_dim"]:
            raise MethodError(f"model.method.rank ({self.rank}) exceeds the embedding width ({facts['embed_dim']})")


class HfLoraMethod(BlocksMethod):
    rank: int = Field(4, ge=1)
    alpha: float = Field(8.0, gt=0)
    """HF peft LoRA/DoRA scaling (alpha / rank); LAE's LoRA learns its scales instead."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """HF peft LoRA/DoRA dropout."""
    target_modules: list[str] | None = None
    """Module-name suffixes for HF peft (setting them selects HF peft on a ViT too); default by family."""

    def implementation(self, facts: dict) -> str:
        return "hf-peft"

    def check(self, facts: dict, num_tasks: int) -> None:
        if self.implementation(facts) == "hf-peft":
            self.hf_target_pattern(facts)
        else:
            super().check(facts, num_tasks)

    def hf_target_pattern(self, facts: dict) -> str:
        """The HF peft target regex on this backbone; MethodError when it matches nothing."""
        family = facts["family"]
        targets = self.target_modules or HF_DEFAULT_TARGETS.get(family)
        if not targets:
            raise MethodError(f"no default LoRA targets for {family}; set model.method.target_modules "
                            "(module-name suffixes such as attn.qkv)")
        blocks = self.blocks if self.blocks is not None else HF_DEFAULT_BLOCKS.get(family)
        pattern = target_pattern(targets, blocks)
        if not any(re.fullmatch(pattern, name) for name in facts["modules"]):
            raise MethodError(f"model.method.target_modules {targets} with blocks {blocks} match no module of {family}")
        return pattern

    def active_params(self, facts: dict | None = None) -> dict[str, Any]:
        values = super().active_params(facts)
        implementation = self.implementation(facts)
        if implementation == "kv-lora":  # LAE's LoRA reads its rank and blocks only
            values = {key: value for key, value in values.items() if key not in ("alpha", "dropout", "target_modules")}
        return {**values, "implementation": implementation}


@METHODS.register("lora", builder=f"{PACKAGE}.lora:build_lora", display="LoRA")
class LoraMethod(HfLoraMethod):
    """LoRA: on a ViT, LAE's LoRA on the key and value rows of ``attn.qkv`` with learnable scales;
    with ``target_modules``, or on other families (EfficientNet's 1x1 convolutions), HF peft LoRA."""

    kind: Literal["lora"] = "lora"

    def implementation(self, facts: dict) -> str:
        return "kv-lora" if not self.target_modules and facts["fused_qkv"] else "hf-peft"


@METHODS.register("dora", builder=f"{PACKAGE}.peft_lora:attach_peft_lora", display="DoRA")
class DoraMethod(HfLoraMethod):
    """HF peft DoRA on named targets."""

    kind: Literal["dora"] = "dora"


@METHODS.register("adapter", builder=f"{PACKAGE}.adapter:build_adapter", display="Adapter", traits=("vit_only",))
class AdapterMethod(BlocksMethod):
    """LAE's adapter: a bottleneck in parallel with each chosen block's attention."""

    kind: Literal["adapter"] = "adapter"
    bottleneck: int = Field(5, ge=1)


@METHODS.register("adaptformer", builder=f"{PACKAGE}.adaptformer:build_adaptformer", display="AdaptFormer",
                  traits=("vit_only",))
class AdaptFormerMethod(BlocksMethod):
    """AdaptFormer: a scaled bottleneck beside each chosen block's MLP."""

    kind: Literal["adaptformer"] = "adaptformer"
    bottleneck: int = Field(5, ge=1)
    adapter_scale: float = Field(0.1, gt=0)
    """AdaptFormer's fixed output scale (LAE's adapter learns its scale)."""
    adapter_dropout: float = Field(0.1, ge=0, lt=1)
    """AdaptFormer's bottleneck dropout."""


@METHODS.register("prefix", builder=f"{PACKAGE}.prefix:build_prefix", display="Prefix", traits=("vit_only",))
class PrefixMethod(BlocksMethod):
    """LAE's key/value prefixes with compensatory attention."""

    kind: Literal["prefix"] = "prefix"
    length: int = Field(10, ge=1)
    """Prefix length."""


@METHODS.register("l2p", builder=f"{PACKAGE}.l2p:build_l2p", display="L2P", traits=("vit_only",))
class L2PMethod(MethodConfig):
    """L2P: a prompt pool, top-k by key-query match, prepended after [CLS]; the classifier reads
    the prompt tokens' mean."""

    kind: Literal["l2p"] = "l2p"
    length: int = Field(5, ge=1)
    """Prompt length."""
    pool_size: int = Field(10, ge=1)
    """Prompts in the pool."""
    top_k: int = Field(5, ge=1)
    """Prompts chosen per input."""
    batchwise_prompt: bool = False
    """Give the whole batch its most chosen prompts (the reference's option; see docs/methods.md)."""
    pull_weight: float = Field(0.1, ge=0)
    """Weight of the pull constraint on chosen keys (0.1 in the reference configs)."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        found = super().problems(cfg)
        if self.top_k > self.pool_size:
            found.append(("top_k", f"{self.top_k} exceeds the prompt pool ({self.pool_size})"))
        return found


@METHODS.register("dualprompt", builder=f"{PACKAGE}.dualprompt:build_dualprompt", display="DualPrompt",
                  traits=("vit_only",))
class DualPromptMethod(BlocksMethod):
    """DualPrompt: general prefixes (blocks 0-1) and one expert prefix per task (the other blocks),
    the expert chosen by key-query match at test."""

    kind: Literal["dualprompt"] = "dualprompt"
    length: int = Field(20, ge=1)
    """Expert prompt length: 20 in the reference's ImageNet-R config, 5 in its CIFAR-100 one (the
    CIFAR-100 preset sets 5)."""
    g_length: int = Field(5, ge=1)
    """General prompt length."""
    pull_weight: float = Field(1.0, ge=0)
    """Weight of the pull constraint on chosen keys (1.0 in the reference configs)."""
    batchwise_prompt: bool = False
    """At test, give the whole batch the expert its samples choose most (the reference's CIFAR-100
    config; see docs/methods.md)."""

    def check(self, facts: dict, num_tasks: int) -> None:
        super().check(facts, num_tasks)
        if not dualprompt_blocks(self.chosen_blocks(facts["depth"]))[1]:
            raise MethodError("DualPrompt needs blocks for expert prompts beyond the general ones (default 0-4)")

    def first_adapted_block(self, facts: dict) -> int | None:
        return 0  # the query is the whole frozen backbone's feature of the image


@METHODS.register("coda", builder=f"{PACKAGE}.coda:build_coda", display="CODA-Prompt", traits=("vit_only",))
class CodaMethod(BlocksMethod):
    """CODA-Prompt: per-block prefixes as query-weighted sums of components; each task owns a slice
    of the components, earlier slices frozen."""

    kind: Literal["coda"] = "coda"
    length: int = Field(8, ge=1)
    """Prompt length (half keys, half values)."""
    pool_size: int = Field(100, ge=1)
    """Components, shared out among the tasks."""
    ortho_weight: float = Field(0.0, ge=0)
    """Orthogonality penalty weight (0.0 in the reference's experiment scripts)."""

    def check(self, facts: dict, num_tasks: int) -> None:
        super().check(facts, num_tasks)
        if self.pool_size < num_tasks:
            raise MethodError(f"model.method.pool_size ({self.pool_size}) must be at least the number of tasks ({num_tasks})")
        if self.length % 2:
            raise MethodError("model.method.length must be even for CODA-Prompt (half keys, half values)")
        if self.pool_size > facts["embed_dim"]:
            raise MethodError(f"model.method.pool_size ({self.pool_size}) exceeds the embedding width ({facts['embed_dim']}): "
                            "that many keys cannot be orthogonal")

    def first_adapted_block(self, facts: dict) -> int | None:
        return 0  # the query is the whole frozen backbone's feature of the image


@METHODS.register("inflora", builder=f"{PACKAGE}.inflora:build_inflora", display="InfLoRA", traits=("vit_only",))
class InfLoraMethod(LowRankBlocksMethod):
    """InfLoRA: per task a new key/value LoRA branch whose A spans the task's input subspace
    orthogonal to earlier tasks' (DualGPM) and stays frozen; only the task's B trains."""

    kind: Literal["inflora"] = "inflora"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference
    rank: int = Field(10, ge=1)
    """Rank of each task's branch (10 in the reference's configs; 5 in the aEPG paper)."""
    threshold: float = Field(0.95, gt=0, le=1)
    """DualGPM's energy threshold lambda at the first task (the reference's ``lamb``: 0.95 on
    CIFAR-100, 0.98 on ImageNet-R; 0.99 in the aEPG paper)."""
    threshold_end: float = Field(1.0, gt=0, le=1)
    """The threshold moves linearly from ``threshold`` towards this over the tasks (``lame``)."""



@METHODS.register("ranpac", builder=f"{PACKAGE}.ranpac:build_ranpac", display="RanPAC")
class RanpacMethod(BlocksMethod):
    """RanPAC: an AdaptFormer adapter trained on the first task only, then frozen; predictions come
    from a random ReLU projection of the features and a ridge-regression head on class statistics
    accumulated task by task."""

    kind: Literal["ranpac"] = "ranpac"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference's adapter
    adapt_first_task: bool = True
    """Train the adapter on the first task (the reference's ``adapter`` rows); false: the frozen
    backbone's features only (its ``ncm`` rows), and nothing trains."""
    bottleneck: int = Field(64, ge=1)
    """The adapter's width (``ffn_num`` 64 in the reference)."""
    adapter_scale: float = Field(0.1, gt=0)
    adapter_dropout: float = Field(0.1, ge=0, lt=1)
    projection_dim: int = Field(10000, ge=0)
    """M, the random projection's width (10000 in the reference); 0: no projection, the ridge head
    reads the features themselves."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        found = super().problems(cfg)
        if "lae" in self.chosen_parts():
            found.append(("parts.lae", "RanPAC predicts with its ridge head, which LAE's online/offline ensemble cannot average"))
        return found

    def check(self, facts: dict, num_tasks: int) -> None:
        if self.adapt_first_task and not facts["is_vit"]:
            raise MethodError(f"RanPAC's first-task adapter needs a timm VisionTransformer, not {facts['family']}; "
                            "set model.method.adapt_first_task=false to use the backbone's features only")
        super().check(facts, num_tasks)

    def trains(self, task: int) -> bool:
        return task == 0 and self.adapt_first_task

    def first_adapted_block(self, facts: dict) -> int | None:
        return super().first_adapted_block(facts) if self.adapt_first_task else None

    def active_params(self, facts: dict | None = None) -> dict[str, Any]:
        values = super().active_params(facts)
        if not self.adapt_first_task:
            values = {key: value for key, value in values.items()
                      if key not in ("blocks", "bottleneck", "adapter_scale", "adapter_dropout")}
        return values


@METHODS.register("sd_lora", builder=f"{PACKAGE}.sd_lora:build_sd_lora", display="SD-LoRA", traits=("vit_only",))
class SdLoraMethod(LowRankBlocksMethod):
    """SD-LoRA: per task a new query/value LoRA; earlier tasks' updates keep their directions
    (B A / (|B| |A|), frozen) and go on learning only their magnitudes, shared by all blocks."""

    kind: Literal["sd_lora"] = "sd_lora"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference
    rank: int = Field(10, ge=1)
    """Rank of each task's branch (10 in the reference's configs)."""
    init_magnitude: float = 1.0
    """Every magnitude's value at the start of each task (1.0 in LibContinual's configs, 0.8 in
    the authors' code)."""



@METHODS.register("slca", builder=f"{PACKAGE}.full:build_full", display="SLCA")
class SlcaMethod(FullMethod):
    """SLCA: full fine-tuning as a slow learner (the backbone at 0.01 times the head's rate) with
    classifier alignment on class statistics (the part ``align``) after each task."""

    kind: Literal["slca"] = "slca"
    default_parts: ClassVar[dict[str, dict[str, Any]]] = {"align": {}}
    lr_scale: float | None = Field(0.01, gt=0)
    """The backbone's rate as a multiple of ``train.lr`` (SLCA's ``bcb_lrscale``, 0.01)."""


@METHODS.register("slca_pp", builder=f"{PACKAGE}.slca_pp:build_slca_pp", display="SLCA++", traits=("vit_only",))
class SlcaPlusPlusMethod(LowRankBlocksMethod):
    """SLCA++: a hybrid slow learner (one LoRA on every block's qkv, fc1 and fc2, its A from the
    pretrained weight's top right singular vectors, plus every norm, bias and the class token)
    with classifier alignment, its features scaled by task age (the part ``align``)."""

    kind: Literal["slca_pp"] = "slca_pp"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference
    default_parts: ClassVar[dict[str, dict[str, Any]]] = {"align": {"shrink_old_means": False, "old_feature_scale": 0.02}}
    lr_scale: float | None = Field(0.1, gt=0)
    """The rate of the norms, biases and class token, and of the LoRA after the first task, as a
    multiple of ``train.lr`` (SLCA++'s ``bcb_lrscale``, 0.1)."""
    rank: int = Field(4, ge=1)
    """The LoRA's rank (``lora_rank``, 4)."""
    scale: float = Field(0.8, gt=0)
    """The LoRA's fixed scale (``lora_scale``, 0.8)."""
    first_task_lr_scale: float = Field(0.5, gt=0)
    """The LoRA's rate on the first task, as a multiple of ``train.lr`` (0.5 in SLCA++'s code)."""
    hybrid: bool = True
    """Train the backbone's norms, biases and class token too (SLCA++'s hybrid slow learner)."""

    def first_adapted_block(self, facts: dict) -> int | None:
        return 0 if self.hybrid else super().first_adapted_block(facts)  # the class token and block 0's norms train



@METHODS.register("macil", builder=f"{PACKAGE}.macil:build_macil", display="MACIL", traits=("vit_only",))
class MacilMethod(LowRankBlocksMethod):
    """MACIL: per task a new key/value LoRA (earlier ones frozen) under a cosine head, with semantic
    drift calibration (the part ``drift``: the class means moved by the features' drift, a Mahalanobis
    constraint and patch distillation) and classifier alignment (the part ``align``)."""

    kind: Literal["macil"] = "macil"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference
    default_parts: ClassVar[dict[str, dict[str, Any]]] = {
        "drift": {},
        "align": {"ridge": 1.0e-3, "keep_aligned_head": True, "align_bias": False}}
    rank: int = Field(32, ge=1)
    """Rank of each task's pair (MACIL's ``rank``, 32)."""
    head: Literal["linear", "cosine"] = "cosine"
    """MACIL's per-task cosine heads, as one cosine head (``model.method.head``)."""


@METHODS.register("tuna", builder=f"{PACKAGE}.adaptformer:build_adaptformer", display="TUNA", traits=("vit_only",))
class TunaMethod(AdaptFormerMethod):
    """TUNA: AdaptFormer adapters on every block trained task after task under a cosine head, every
    task's adapters kept and chosen per input by the least entropy at test, beside the universal ones
    (the part ``select``), and the head re-aligned on Gaussian draws (the part ``align``)."""

    kind: Literal["tuna"] = "tuna"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference's adapter
    default_parts: ClassVar[dict[str, dict[str, Any]]] = {
        "select": {},
        "align": {"samples_per_class": 80, "epochs": 30, "lr": 0.005, "cosine_epochs": 5, "temperature": None,
                  "shrink_old_means": False, "keep_aligned_head": True, "align_bias": False}}
    bottleneck: int = Field(16, ge=1)
    """The adapter's width (TUNA's 16)."""
    head: Literal["linear", "cosine"] = "cosine"
    """TUNA's per-task cosine heads, as one cosine head (``model.method.head``)."""


@METHODS.register("lca", builder=f"{PACKAGE}.adaptformer:build_adaptformer", display="LCA", traits=("vit_only",))
class LcaMethod(AdaptFormerMethod):
    """LCA: AdaptFormer adapters on every block, each task training from their incremental TIES merge
    (the part ``merge``), and the classifier re-aligned on Gaussian draws under its robust loss (the
    part ``align``)."""

    kind: Literal["lca"] = "lca"
    default_blocks: ClassVar[list[int] | None] = None  # every block, as the reference's adapter
    default_parts: ClassVar[dict[str, dict[str, Any]]] = {
        "align": {"samples_per_class": 512, "draws": "once", "batch_size": 128, "epochs": 10, "lr": 0.005,
                  "temperature": None, "shrink_old_means": False, "robust_weight": 0.1, "align_bias": False,
                  "keep_aligned_head": True},
        "merge": {}}
    bottleneck: int = Field(16, ge=1)
    """The adapter's width (LCA's ``ffn_num``, 16)."""
