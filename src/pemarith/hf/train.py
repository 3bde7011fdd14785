"""Train one module: LoRA, (IA)3 or full fine-tuning of a base model on a task.

``train(TrainConfig(...)) -> Path`` writes a PEFT adapter directory (or, for ``peft_type="full"``,
a complete Hugging Face model directory) plus ``training.json``: the arguments, the sha256 of the
data rows used, the loss of every step, the time taken, and a fingerprint of the adapter's initial
weights.

Shared initialisation (the paper composes modules trained from the same init): the LoRA A
matrices are drawn by PEFT from torch's global generator, so seeding it with ``init_seed`` right
before ``get_peft_model`` makes A bit-identical across modules trained with the same
``init_seed`` and targets, whatever their data; the new classification head is seeded the same
way. ``seed`` then drives data order and dropout only. On CPU a run is deterministic: the same
config gives the same weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PemarithError, did_you_mean
from ..fs import holds, output_dir
from . import features as F

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
_LLAMA = Targets(lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "down_proj"),
                 feedforward=("down_proj",))

#: Default targets by ``config.model_type``.
DEFAULT_TARGETS: dict[str, Targets] = {
    "bert": _BERT, "roberta": _ROBERTA, "xlm-roberta": _ROBERTA, "electra": _ROBERTA,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "gemma": _LLAMA, "gemma2": _LLAMA,
    "gemma3": _LLAMA, "gemma3_text": _LLAMA,
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
            raise bad(f"unknown peft_type {self.peft_type!r}{did_you_mean(self.peft_type, PEFT_TYPES)};"
                      f" use {', '.join(PEFT_TYPES)}")
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
            (self.model_dropout is None or 0 <= self.model_dropout < 1,
             f"model_dropout must be in [0, 1), not {self.model_dropout}"),
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


def rows_sha256(rows: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the rows as canonical JSON lines, in order (order changes training)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def training_rows(cfg: TrainConfig, task: Any) -> tuple[list[dict[str, Any]], str]:
    """The rows ``cfg`` trains on and a description of where they come from."""
    if cfg.rows is not None:
        return [dict(r) for r in cfg.rows], f"{len(cfg.rows)} given rows"
    from .data import load_split

    if cfg.split not in task.splits:
        raise PemarithError(f"task {task.name} has no {cfg.split!r} split; it has "
                            f"{', '.join(task.splits)}")
    rows = load_split(task, cfg.split, data_dir=cfg.data_dir, seed=cfg.split_seed)
    source = f"{task.name} {cfg.split} (split seed {cfg.split_seed})"
    if cfg.subset is None:
        return rows, source
    from .skew import skewed_subsets

    parts = skewed_subsets(rows, seed=cfg.subset_seed, size=cfg.subset_size)
    return list(parts[SUBSETS.index(cfg.subset)]), (
        f"{cfg.subset} of {source}, subset seed {cfg.subset_seed}, size {cfg.subset_size}")


def _peft_config(cfg: TrainConfig, model: Any, kind: str) -> Any:
    from peft import IA3Config, LoraConfig, TaskType

    family = DEFAULT_TARGETS.get(model.config.model_type)
    targets = cfg.targets
    if targets is None:
        if family is None:
            raise PemarithError(f"no default targets for model type {model.config.model_type!r};"
                                " give targets (e.g. --targets q_proj,v_proj)")
        targets = family.lora if cfg.peft_type == "lora" else family.ia3
    task_type = TaskType.SEQ_CLS if kind == "encoder" else TaskType.CAUSAL_LM
    common: dict[str, Any] = {"task_type": task_type,
                              "target_modules": targets if isinstance(targets, str) else list(targets)}
    head = cfg.modules_to_save
    if head is None and kind == "encoder" and family is not None:
        head = family.head
    if head is not None:  # else PEFT's default for SEQ_CLS: the new classifier
        common["modules_to_save"] = list(head)
    if cfg.peft_type == "lora":
        return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, **common)
    ff = cfg.feedforward
    if ff is None:
        if cfg.targets is None:
            ff = family.feedforward
        else:  # the given targets that are feed-forward modules in the default table
            known = family.feedforward if family else ()
            ff = [t for t in targets if isinstance(known, tuple) and t in known]
    return IA3Config(feedforward_modules=ff if isinstance(ff, str) else list(ff), **common)


def _fingerprint(model: Any) -> str:
    """sha256 of the trainable tensors at init, by name (equal fingerprints: equal init)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.replace(".default", "").encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _features(cfg: TrainConfig, task: Any, kind: str, tok: Any,
              rows: list[dict[str, Any]]) -> tuple[list[F.Feature], str]:
    """Tokenized examples and the objective actually used."""
    objective = cfg.objective
    if kind == "encoder":
        if objective == "lm" or task.kind == "text":
            raise PemarithError(f"an encoder trains on labelled tasks only; {task.name} "
                                f"({task.kind}) with objective {objective} needs a causal LM")
        F.check_rows(rows, task)
        return F.encoder_features(tok, task, rows, cfg.max_length), "head"
    if objective == "auto":
        objective = "lm" if task.kind == "text" else "classify"
    if objective == "lm":
        F.check_rows(rows, task, labelled=False)
        return F.lm_features(tok, [r["text_a"] for r in rows], cfg.max_length), "lm"
    if task.kind != "classification" or not task.label_words:
        raise PemarithError(f"task {task.name} has no label words: a causal LM cannot be trained "
                            "to classify it; use an encoder or --objective lm")
    F.check_rows(rows, task)
    return F.prompt_features(tok, task, rows, cfg.max_length), "classify"


def _loss(model: Any, batch: dict[str, Any], objective: str) -> Any:
    if objective == "classify":  # mean NLL of the answer tokens; last positions' logits only
        from .evaluate import answer_logprob

        return -answer_logprob(model, batch).sum() / (batch["labels"] != -100).sum()
    return model(**batch).loss


def _order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index batches for ``steps`` steps: a fresh seeded permutation per epoch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen).tolist()
        out += [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    return out[:steps]


#: settings that do not change what is trained: a resume point written under other values of
#: these still applies
_RESUME_IGNORES = ("overwrite", "progress", "checkpoint_seconds")


def resume_file(output_dir: str | Path) -> Path:
    """Where an interrupted :func:`train` keeps its resume point: ``.<name>.resume.pt`` beside
    the output directory (the trainable tensors, the optimiser and schedule state, the dropout
    generator's state, the step and the losses so far). It is removed when training finishes."""
    out = Path(output_dir)
    return out.parent / f".{out.name}.resume.pt"


def _resume_identity(cfg: TrainConfig, init_fp: str) -> dict[str, Any]:
    return {**{k: v for k, v in cfg.to_json().items() if k not in _RESUME_IGNORES},
            "init_fingerprint": init_fp}


def train(cfg: TrainConfig) -> Path:
    """Train the module ``cfg`` describes; return its output directory (see module docstring)."""
    import torch

    from .models import PACKAGED, load_causal_lm, load_encoder
    from .tasks import get_task

    start = time.perf_counter()
    task = get_task(cfg.task)
    kind = F.model_kind(cfg.model)
    rows, source = training_rows(cfg, task)
    out = Path(cfg.output_dir)
    protect = [Path(cfg.init_adapter)] if cfg.init_adapter is not None else []
    with output_dir(out, protect, force=cfg.overwrite, is_previous=holds("training.json"),
                    what="trained module (a directory with training.json)") as tmp:
        # weights stay float32 (the optimiser's master copy); --dtype is the autocast dtype
        from .hardware import Placement, resolve

        where = resolve(cfg.device, cfg.dtype) if cfg.device or cfg.dtype else None
        master = Placement(where.device, torch.float32) if where is not None else None
        if kind == "encoder":
            if task.kind == "text":
                raise PemarithError(f"task {task.name} is a text task: it needs a causal LM")
            model, tok = load_encoder(cfg.model, task.num_labels, task.problem_type,
                                      seed=cfg.init_seed, placement=master)
        else:
            model, tok = load_causal_lm(cfg.model, placement=master)
        feats, objective = _features(cfg, task, kind, tok, rows)
        if not feats:
            raise PemarithError(f"no training examples from {source}")
        if cfg.model_dropout is not None:
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.model_dropout
        if cfg.peft_type == "full":
            net = model
            net.requires_grad_(True)
        else:
            from peft import PeftModel, get_peft_model

            torch.manual_seed(cfg.init_seed)  # the shared init: same A for the same init_seed
            with warnings.catch_warnings():  # peft calls a deprecated transformers property
                warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
                if cfg.init_adapter is not None:
                    net = PeftModel.from_pretrained(model, str(cfg.init_adapter), is_trainable=True)
                else:
                    net = get_peft_model(model, _peft_config(cfg, model, kind))
        init_fp = _fingerprint(net)
        params = [p for p in net.parameters() if p.requires_grad]
        steps = cfg.steps or max(1, math.ceil((cfg.epochs or 1.0) * len(feats) / cfg.batch_size))
        order = _order(len(feats), cfg.batch_size, steps, cfg.seed)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup_ratio * steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if cfg.schedule == "constant":
                return 1.0
            return max(0.0, (steps - step) / max(1, steps - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        torch.manual_seed(cfg.seed)  # dropout
        side = "left" if objective == "classify" else "right"
        losses: list[float] = []
        trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
        resume, identity = resume_file(out), _resume_identity(cfg, init_fp)
        if cfg.checkpoint_seconds and resume.is_file():
            point = torch.load(resume, weights_only=True)
            if point.get("identity") == identity:
                with torch.no_grad():
                    for n, t in point["trainable"].items():
                        trainable[n].copy_(t)
                opt.load_state_dict(point["optimizer"])
                sched.load_state_dict(point["schedule"])
                torch.set_rng_state(point["rng"])
                losses = list(point["losses"])
        done = len(losses)
        net.train()
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), initial=done, desc=f"train {task.name} ({cfg.peft_type})",
                   disable=not cfg.progress, unit="step")
        saved_at = time.perf_counter()
        for idx in order[done:]:
            batch = F.pad([feats[i] for i in idx], tok.pad_token_id, side=side)
            if where is not None:
                batch = {k: v.to(where.device) for k, v in batch.items()}
            with torch.autocast(device_type=where.device.type if where else "cpu",
                                dtype=where.dtype if where else torch.bfloat16,
                                enabled=where is not None and where.dtype != torch.float32):
                loss = _loss(net, batch, objective).float()
            if not torch.isfinite(loss):
                raise PemarithError(f"train: the loss became {loss.item()} at step {len(losses)}; "
                                    "lower the learning rate")
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 6))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            if (cfg.checkpoint_seconds and len(losses) < len(order)
                    and time.perf_counter() - saved_at >= cfg.checkpoint_seconds):
                part = resume.with_name(resume.name + ".tmp")
                torch.save({"identity": identity, "losses": losses, "rng": torch.get_rng_state(),
                            "trainable": {n: p.detach().clone() for n, p in trainable.items()},
                            "optimizer": opt.state_dict(), "schedule": sched.state_dict()}, part)
                os.replace(part, resume)
                saved_at = time.perf_counter()
        bar.close()
        net.eval()
        if cfg.peft_type == "full":
            net.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        else:
            net.save_pretrained(tmp)
            if cfg.model in PACKAGED:  # the hub id resolves anywhere; the cache path, here only
                _set_base_model(tmp / "adapter_config.json", PACKAGED[cfg.model].hub_id)
        record = {
            "config": cfg.to_json(),
            "kind": kind,
            "objective": objective,
            "data": {"source": source, "rows": len(rows), "examples": len(feats),
                     "sha256": rows_sha256(rows)},
            "steps": steps,
            "trainable_parameters": sum(p.numel() for p in params),
            "init_fingerprint": init_fp,
            "resumed_at_step": done or None,
            "loss": losses,
            "seconds": round(time.perf_counter() - start, 2),
            "versions": _versions(),
            "base_model": _base_record(cfg.model),
        }
        if kind == "encoder":  # what bake writes into config.json for the head (bake_config)
            record["head"] = {"num_labels": task.num_labels, "problem_type": task.problem_type,
                              "id2label": {str(i): n for i, n in enumerate(task.label_names)}
                              if len(task.label_names) == task.num_labels else {}}
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    resume.unlink(missing_ok=True)
    return out


def _base_record(model: str) -> dict[str, Any]:
    """What training.json says of the base: the name given, the hub id recorded in
    adapter_config.json and the local checkpoint it was loaded from."""
    from .models import PACKAGED, resolve_model

    packaged = PACKAGED.get(model)
    return {"name": model, "hub_id": packaged.hub_id if packaged else None, "path": resolve_model(model),
            "weights": packaged.description if packaged else None}


def _set_base_model(config_file: Path, name: str) -> None:
    # after saving: PEFT would try to fetch a config for a name it cannot resolve
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("pemarith", "torch", "transformers", "peft"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "unknown"
    return out
