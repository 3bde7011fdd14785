"""What :func:`pemarith.hf.train.train` trains and how: :class:`TrainConfig` (checked when it is
built), the names it accepts (``PEFT_TYPES``, ``SUBSETS``, ...) and each model family's default
target modules (``DEFAULT_TARGETS``). Needs no torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PemarithError, did_you_mean

PEFT_TYPES = ("lora", "ia3", "full")
SUBSETS = ("skew0", "skew1")
OBJECTIVES = ("auto", "classify", "lm")
SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class Targets:
    """Default target modules of one architecture family."""

    lora: tuple[str, ...] | str
    ia3: tuple[str, ...] | str
    feedforward: tuple[str, ...] | str  # the (IA)3 modules whose input, not output, is scaled
    head: tuple[str, ...] | None = None  # trained and saved whole (None: PEFT's SEQ_CLS default)


_BERT = Targets(
    lora=("query", "value"),
    # regex: BERT has two "output.dense" per layer; only the feed-forward one is (IA)3's l_ff
    ia3=r".*\.attention\.self\.(key|value)|.*\.layer\.\d+\.output\.dense",
    feedforward=r".*\.layer\.\d+\.output\.dense",
    # BERT's pooler (dense + tanh on [CLS]) is the first layer of RoBERTa's classification head,
    # which the paper trains. It also must be trained here: sentence-transformers checkpoints
    # such as all-MiniLM-L6-v2 were trained with mean pooling, and their pooled [CLS] output is
    # small and nearly constant, so a new classifier on it alone learns little more than the
    # label prior.
    head=("classifier", "pooler"),
)
_ROBERTA = dataclasses.replace(_BERT, head=("classifier",))  # its head holds the dense layer
_LLAMA = Targets(lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "down_proj"), feedforward=("down_proj",))

#: Default targets by ``config.model_type``.
DEFAULT_TARGETS: dict[str, Targets] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": _ROBERTA,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3": _LLAMA,
    "gemma3_text": _LLAMA,
}


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. Hyperparameter names follow PEFT (``r``, ``alpha`` = lora_alpha).

    Data: the task's ``split`` (default train), or ``subset`` ``skew0``/``skew1`` of it (the
    Appendix B label-skewed subsets of ``subset_size`` rows, drawn with ``subset_seed``), or
    explicit ``rows`` (dicts with ``text_a``, ``text_b``, ``label``).
    Length: ``steps`` optimiser steps, or ``epochs`` passes (default 1 epoch).
    ``modules_to_save``: modules trained and saved whole; for encoders the default is the head
    (BERT: the classifier and the pooler, see ``DEFAULT_TARGETS``). ``dropout`` is LoRA's dropout; ``model_dropout`` overrides every dropout layer of the base
    model (Table 8's dropout for FFT and (IA)3). ``objective``: ``auto`` trains causal LMs on
    answer words for classification tasks and as plain LMs on text tasks; ``lm`` forces language
    modelling on the rows' texts (e.g. Yelp text for domain transfer).
    """

    model: str
    task: str
    output_dir: str | Path
    peft_type: str = "lora"
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | str | None = None
    feedforward: tuple[str, ...] | str | None = None
    modules_to_save: tuple[str, ...] | None = None
    dropout: float = 0.1
    model_dropout: float | None = None
    device: str | None = None  # pemarith.hf.hardware: auto, cpu, cuda, cuda:N, mps (None: cpu)
    dtype: str | None = None  # autocast dtype: float32 (None), bfloat16, float16, auto
    init_seed: int = 0
    seed: int = 0
    steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-4
    batch_size: int = 16
    max_length: int = 128
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    objective: str = "auto"
    split: str = "train"
    split_seed: int = 0
    data_dir: str | Path | None = None
    rows: tuple[Mapping[str, Any], ...] | None = None
    subset: str | None = None
    subset_seed: int = 0
    subset_size: int = 1000
    overwrite: bool = False
    progress: bool = True
    init_adapter: str | Path | None = None  # continue training this adapter (4.6: t_toxic from t1)
    checkpoint_seconds: float = 0.0  # save a resume point this often (0: never); see resume_file()

    def __post_init__(self) -> None:
        def bad(msg: str) -> PemarithError:
            return PemarithError(f"train: {msg}")

        if self.peft_type not in PEFT_TYPES:
            raise bad(
                f"unknown peft_type {self.peft_type!r}{did_you_mean(self.peft_type, PEFT_TYPES)};"
                f" use {', '.join(PEFT_TYPES)}"
            )
        for name in ("targets", "feedforward", "modules_to_save"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if self.rows is not None:
            object.__setattr__(self, "rows", tuple(dict(r) for r in self.rows))
            if not self.rows:
                raise bad("rows is empty")
            if self.subset is not None:
                raise bad("give rows or a subset, not both")
        if self.subset is not None and self.subset not in SUBSETS:
            raise bad(f"subset must be one of {', '.join(SUBSETS)}, not {self.subset!r}")
        if self.steps is not None and self.epochs is not None:
            raise bad("give steps or epochs, not both")
        if self.init_adapter is not None:
            if self.peft_type == "full":
                raise bad("init_adapter continues a PEFT adapter; it does not apply to peft_type 'full'")
            if not (Path(self.init_adapter) / "adapter_config.json").is_file():
                raise bad(f"init_adapter {self.init_adapter} is not a PEFT adapter directory")
        checks = [
            (self.r >= 1, f"r must be >= 1, not {self.r}"),
            (self.alpha > 0, f"alpha must be > 0, not {self.alpha}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), not {self.dropout}"),
            (
                self.model_dropout is None or 0 <= self.model_dropout < 1,
                f"model_dropout must be in [0, 1), not {self.model_dropout}",
            ),
            (self.steps is None or self.steps >= 1, f"steps must be >= 1, not {self.steps}"),
            (self.epochs is None or self.epochs > 0, f"epochs must be > 0, not {self.epochs}"),
            (self.lr > 0, f"lr must be > 0, not {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size}"),
            (self.max_length >= 4, f"max_length must be >= 4, not {self.max_length}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (self.subset_size >= 2, f"subset_size must be >= 2, not {self.subset_size}"),
            (self.checkpoint_seconds >= 0, f"checkpoint_seconds must be >= 0, not {self.checkpoint_seconds}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise bad(msg)

    def to_json(self) -> dict[str, Any]:
        """The arguments as JSON-able values (rows replaced by their count)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "rows":
                v = None if v is None else f"<{len(v)} rows>"
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out
