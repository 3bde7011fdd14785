"""Continue training a saved PEFT adapter on new rows (4.6: ``t_toxic`` is ``t1`` trained further).

:func:`pemarith.hf.train.train` always starts a fresh adapter. ``continue_train(cfg, init)``
loads the adapter directory ``init`` onto the base model (trainable), then runs the same loop
as ``train`` (AdamW, linear or constant schedule with warm-up, the same batching and loss, the
same ``training.json`` record plus ``init_adapter``) and saves the result in ``cfg.output_dir``.
The shared helpers come from :mod:`pemarith.hf.train`; only the model set-up differs.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from ..errors import PemarithError
from ..io import output_dir
from . import features as F
from .train import (
    TrainConfig,
    _features,
    _fingerprint,
    _loss,
    _order,
    _set_base_model,
    _versions,
    rows_sha256,
    training_rows,
)


def continue_train(cfg: TrainConfig, init: str | Path) -> Path:
    """Train the adapter at ``init`` further as ``cfg`` says; write it to ``cfg.output_dir``."""
    import torch
    from peft import PeftModel

    from .models import PACKAGED, load_causal_lm
    from .tasks import get_task

    init = Path(init)
    if not (init / "adapter_config.json").is_file():
        raise PemarithError(f"continue_train: {init} is not a PEFT adapter directory")
    if cfg.peft_type == "full" or F.model_kind(cfg.model) != "causal":
        raise PemarithError("continue_train: PEFT adapters on causal LMs only")
    start = time.perf_counter()
    task = get_task(cfg.task)
    rows, source = training_rows(cfg, task)
    out = Path(cfg.output_dir)
    with output_dir(out, inputs=[], force=cfg.overwrite) as tmp:
        model, tok = load_causal_lm(cfg.model)
        feats, objective = _features(cfg, task, "causal", tok, rows)
        if not feats:
            raise PemarithError(f"no training examples from {source}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            net = PeftModel.from_pretrained(model, str(init), is_trainable=True)
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
        torch.manual_seed(cfg.seed)
        side = "left" if objective == "classify" else "right"
        losses: list[float] = []
        net.train()
        for idx in order:
            batch = F.pad([feats[i] for i in idx], tok.pad_token_id, side=side)
            loss = _loss(net, batch, objective)
            if not torch.isfinite(loss):
                raise PemarithError(f"continue_train: the loss became {loss.item()} at step "
                                    f"{len(losses)}; lower the learning rate")
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 6))
        net.eval()
        net.save_pretrained(tmp)
        if cfg.model in PACKAGED:
            _set_base_model(tmp / "adapter_config.json", cfg.model)
        record = {
            "config": cfg.to_json(), "kind": "causal", "objective": objective,
            "init_adapter": str(init),
            "data": {"source": source, "rows": len(rows), "examples": len(feats),
                     "sha256": rows_sha256(rows)},
            "steps": steps, "trainable_parameters": sum(p.numel() for p in params),
            "init_fingerprint": init_fp, "loss": losses,
            "seconds": round(time.perf_counter() - start, 2), "versions": _versions(),
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return out
