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

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..fs import holds, output_dir
from . import features as F
from .train_config import DEFAULT_TARGETS, PEFT_TYPES, SUBSETS, TrainConfig

__all__ = ["PEFT_TYPES", "TrainConfig", "resume_file", "rows_sha256", "train", "training_rows"]


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
        raise PemarithError(f"task {task.name} has no {cfg.split!r} split; it has {', '.join(task.splits)}")
    rows = load_split(task, cfg.split, data_dir=cfg.data_dir, seed=cfg.split_seed)
    source = f"{task.name} {cfg.split} (split seed {cfg.split_seed})"
    if cfg.subset is None:
        return rows, source
    from .skew import skewed_subsets

    parts = skewed_subsets(rows, seed=cfg.subset_seed, size=cfg.subset_size)
    return list(parts[SUBSETS.index(cfg.subset)]), (
        f"{cfg.subset} of {source}, subset seed {cfg.subset_seed}, size {cfg.subset_size}"
    )


def _peft_config(cfg: TrainConfig, model: Any, kind: str) -> Any:
    from peft import IA3Config, LoraConfig, TaskType

    family = DEFAULT_TARGETS.get(model.config.model_type)
    targets = cfg.targets
    if targets is None:
        if family is None:
            raise PemarithError(
                f"no default targets for model type {model.config.model_type!r};"
                " give targets (e.g. --targets q_proj,v_proj)"
            )
        targets = family.lora if cfg.peft_type == "lora" else family.ia3
    task_type = TaskType.SEQ_CLS if kind == "encoder" else TaskType.CAUSAL_LM
    common: dict[str, Any] = {
        "task_type": task_type,
        "target_modules": targets if isinstance(targets, str) else list(targets),
    }
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


def _features(
    cfg: TrainConfig, task: Any, kind: str, tok: Any, rows: list[dict[str, Any]]
) -> tuple[list[F.Feature], str]:
    """Tokenized examples and the objective actually used."""
    objective = cfg.objective
    if kind == "encoder":
        if objective == "lm" or task.kind == "text":
            raise PemarithError(
                f"an encoder trains on labelled tasks only; {task.name} "
                f"({task.kind}) with objective {objective} needs a causal LM"
            )
        F.check_rows(rows, task)
        return F.encoder_features(tok, task, rows, cfg.max_length), "head"
    if objective == "auto":
        objective = "lm" if task.kind == "text" else "classify"
    if objective == "lm":
        F.check_rows(rows, task, labelled=False)
        return F.lm_features(tok, [r["text_a"] for r in rows], cfg.max_length), "lm"
    if task.kind != "classification" or not task.label_words:
        raise PemarithError(
            f"task {task.name} has no label words: a causal LM cannot be trained "
            "to classify it; use an encoder or --objective lm"
        )
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
        out += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
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
    return {
        **{k: v for k, v in cfg.to_json().items() if k not in _RESUME_IGNORES},
        "init_fingerprint": init_fp,
    }


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
    with output_dir(
        out,
        protect,
        force=cfg.overwrite,
        is_previous=holds("training.json"),
        what="trained module (a directory with training.json)",
    ) as tmp:
        # weights stay float32 (the optimiser's master copy); --dtype is the autocast dtype
        from .hardware import Placement, resolve

        where = resolve(cfg.device, cfg.dtype) if cfg.device or cfg.dtype else None
        master = Placement(where.device, torch.float32) if where is not None else None
        if kind == "encoder":
            if task.kind == "text":
                raise PemarithError(f"task {task.name} is a text task: it needs a causal LM")
            model, tok = load_encoder(
                cfg.model, task.num_labels, task.problem_type, seed=cfg.init_seed, placement=master
            )
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

        bar = tqdm(
            total=len(order),
            initial=done,
            desc=f"train {task.name} ({cfg.peft_type})",
            disable=not cfg.progress,
            unit="step",
        )
        saved_at = time.perf_counter()
        for idx in order[done:]:
            batch = F.pad([feats[i] for i in idx], tok.pad_token_id, side=side)
            if where is not None:
                batch = {k: v.to(where.device) for k, v in batch.items()}
            with torch.autocast(
                device_type=where.device.type if where else "cpu",
                dtype=where.dtype if where else torch.bfloat16,
                enabled=where is not None and where.dtype != torch.float32,
            ):
                loss = _loss(net, batch, objective).float()
            if not torch.isfinite(loss):
                raise PemarithError(
                    f"train: the loss became {loss.item()} at step {len(losses)}; lower the learning rate"
                )
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 6))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            if (
                cfg.checkpoint_seconds
                and len(losses) < len(order)
                and time.perf_counter() - saved_at >= cfg.checkpoint_seconds
            ):
                part = resume.with_name(resume.name + ".tmp")
                torch.save(
                    {
                        "identity": identity,
                        "losses": losses,
                        "rng": torch.get_rng_state(),
                        "trainable": {n: p.detach().clone() for n, p in trainable.items()},
                        "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(),
                    },
                    part,
                )
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
            "data": {
                "source": source,
                "rows": len(rows),
                "examples": len(feats),
                "sha256": rows_sha256(rows),
            },
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
            record["head"] = {
                "num_labels": task.num_labels,
                "problem_type": task.problem_type,
                "id2label": {str(i): n for i, n in enumerate(task.label_names)}
                if len(task.label_names) == task.num_labels
                else {},
            }
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    resume.unlink(missing_ok=True)
    return out


def _base_record(model: str) -> dict[str, Any]:
    """What training.json says of the base: the name given, the hub id recorded in
    adapter_config.json and the local checkpoint it was loaded from."""
    from .models import PACKAGED, resolve_model

    packaged = PACKAGED.get(model)
    return {
        "name": model,
        "hub_id": packaged.hub_id if packaged else None,
        "path": resolve_model(model),
        "weights": packaged.description if packaged else None,
    }


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
