"""What shared code asks of a model family, answered by the family's own frozen config.

Every family config (``DETRConfig``, ``DeformableDETRConfig``, ...) derives from ``FamilyConfig`` and answers: its
name and description, how many encoder tokens it selects queries from, its official resize, a memory estimate for
one eager run, a tiny variant for tests, and how to build its module. Shared code (registry, inspect, exports,
runners, option checks) asks the config and never switches on the family, so a new family is one model module (its
config and modules), one checkpoint reader module, and its zoo entries.
"""

import dataclasses
import math

from detr_deploy import contract


class FamilyConfig:
    """Mixin for a family's frozen config dataclass. Class attributes a family sets (with these defaults):

    - ``family``: the short key recorded in exports (``contract.META_FAMILY``), e.g. ``"deformable_detr"``.
    - ``label``: how people call it, e.g. ``"Deformable DETR"``.
    - ``resize``: the official evaluation resize as ``contract.META_RESIZE`` writes it.
    - ``size_divisor``: input sides must be multiples of it.
    - ``memory_full_attention``: whether an encoder attends over every stride-32 token (quadratic memory).

    and the capabilities the export, runtimes and parity read: ``output_names``, ``score_activation`` ("softmax"
    with a trailing no-object logit, or "sigmoid"), ``query_order_is_ranked`` (queries from a top-k, so parity
    aligns them), ``normalize_mean``/``normalize_std``, ``num_top_detections`` (the official top-k over query x
    class, or None for every query's best class) and ``supports_padding_mask``. The dataclass fields must include
    ``num_classes``, ``num_queries``, ``hidden_dim``, ``num_heads``, ``num_encoder_layers``, ``num_decoder_layers``,
    ``dim_feedforward`` and ``backbone`` (a nested config dataclass, recorded in exports as JSON).
    """

    family: str = ""
    label: str = ""
    resize: str = contract.RESIZE_KEEP_ASPECT
    size_divisor: int = 1
    memory_full_attention: bool = False

    # -- the family answers these -------------------------------------------------------------------------------

    def build(self):
        """The family's nn.Module for this config (random weights, train mode: ``registry.build_model`` wraps it)."""
        raise NotImplementedError

    @property
    def architecture_name(self) -> str:
        """The zoo-style name of the architecture, whatever its sizes: ``detr_r50_dc5``, ``rtdetrv2_r18vd``.

        A fine-tuned model keeps the name of the architecture it was fine-tuned from."""
        raise NotImplementedError

    @property
    def backbone_label(self) -> str:
        """The backbone for people: ``ResNet-50 DC5``, ``ResNet-18-vd``."""
        raise NotImplementedError

    def tiny(self):
        """The same architecture (flags, backbone kind, heads layout) with tiny widths and depths, for tests."""
        raise NotImplementedError

    @property
    def variants(self) -> tuple[str, ...]:
        """Labels of the variant flags that are on (``("box refinement", "two-stage")``); none by default."""
        return ()

    @property
    def attention_summary(self) -> str:
        """The deformable attention's levels and points for ``describe``, or "" (models without it)."""
        return ""

    @property
    def selection_strides(self) -> tuple[int, ...]:
        """Strides of the encoder levels whose tokens a query-selecting model (a top-k over encoder scores) ranks;
        () for models with learned queries."""
        return ()

    @property
    def deformable_strides(self) -> tuple[int, ...]:
        """Strides of the levels deformable attention samples (for the memory estimate); () when there is none."""
        return ()

    # -- derived: the same for every family ---------------------------------------------------------------------

    @property
    def full_label(self) -> str:
        """``label`` with the variants: 'Deformable DETR (box refinement, two-stage)'."""
        return self.label + (f" ({', '.join(self.variants)})" if self.variants else "")

    def describe(self) -> str:
        """One line for people: 'Deformable DETR (box refinement), ResNet-50, 20 classes, 300 queries, ...'."""
        parts = [
            self.full_label,
            self.backbone_label,
            f"{self.num_classes} classes",
            f"{self.num_queries} queries",
            f"{self.num_encoder_layers}+{self.num_decoder_layers} layers",
            f"width {self.hidden_dim}",
            f"{self.num_heads} heads",
            f"FFN {self.dim_feedforward}",
        ]
        if self.attention_summary:
            parts.append(self.attention_summary)
        return ", ".join(parts)

    def selection_tokens(self, height: int, width: int) -> int:
        """How many encoder tokens a ``height`` x ``width`` input gives the query selection; None for models with
        learned queries (they select nothing)."""
        return contract.tokens_at_strides(self.selection_strides, height, width) if self.selection_strides else None

    def estimated_peak_bytes(self, batch: int, height: int, width: int) -> int:
        """A rough upper estimate of eager PyTorch's peak memory for one float32 run of [batch, 3, height, width].

        The ResNet's early stages hold ~300 bytes per input pixel (64-256 channels at stride 2-4, a few live at
        once). Deformable attention is linear in its tokens (every sampled level) times the width and its sampling
        points, ~40 floats per channel. Full attention over the stride-32 tokens (DETR's encoder, RT-DETR's AIFI)
        holds logits and softmax of [heads, S, S]."""
        tokens_32 = math.ceil(height / 32) * math.ceil(width / 32)
        total = 300 * height * width
        if self.deformable_strides:
            per_token_32 = sum((32 / stride) ** 2 for stride in self.deformable_strides)
            total += 40 * round(tokens_32 * per_token_32) * self.hidden_dim * 4
        if self.memory_full_attention:
            total += 2 * 8 * tokens_32**2 * 4 + 20 * tokens_32 * self.hidden_dim * 4
        return batch * total

    def replace(self, **changes):
        """A copy with ``changes`` (the config is frozen)."""
        return dataclasses.replace(self, **changes)
