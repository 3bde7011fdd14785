"""Write a composition into a live PEFT model, in place: no disk round trip, no reload.

A lambda sweep evaluates the same base model under many compositions. Saving each one with
``PEM.save`` and reloading base + adapter costs a model load per value; here the base model is
wrapped in a PEFT model once, and for each value the composed tensors that ``PEM.save`` would
have written (``PEM.iter_tensors``, PEFT's saved-key format) are copied straight into the
adapter's parameters. The model then computes exactly what
``PeftModel.from_pretrained(base, saved_dir)`` would (tests check the logits).

How a composition maps onto the live adapter:

- The live adapter is built from ``PEM.output_config(mode, rank)``; its parameters are reached
  through PEFT's own ``get_peft_model_state_dict``, whose tensors share storage with the live
  parameters, so the saved-key names match ``iter_tensors`` without any renaming of ours.
- LoRA with a smaller rank than the live adapter (exact mode when a term is dropped, or a single
  module used as a reference line) is zero-padded: extra rows of A and columns of B that are zero
  add nothing to ``B A``. A scaling ``s = lora_alpha / r`` (``/ sqrt(r)`` under rsLoRA) that
  differs from the live one is folded into B, so ``s_live * B' A == s * B A``. These rules, and
  which config fields must agree, are each kind's ``live_check``/``live_tensor``
  (:mod:`pemarith.kinds`); nothing here branches on the kind.
- A composition the live adapter cannot hold (other targets, larger rank, another kind) rebuilds
  the adapter once from the new config.
- Every parameter of the live adapter must be written: a missing or unknown key is an error.
- By default the adapter is merged into the base weights for evaluation (PEFT's
  ``merge_adapter``, the arithmetic ``merge_and_unload`` uses): on MiniLM with LoRA on
  query/value the unmerged forward costs about 1.5x the CPU time of the merged one. Before the
  next composition is written, the targeted base weights are restored from a copy taken once,
  exactly, so no rounding accumulates over a sweep.

:class:`Session` is what a sweep drives: the base model loaded once, its :class:`LiveAdapter`,
and evaluation of the live (or base) model on the tasks' splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import CompatibilityError, PemarithError, did_you_mean
from ..kinds import KINDS

DEFAULT_ADAPTER = "default"


def peft_config(config: dict[str, Any]) -> Any:
    """A ``peft.PeftConfig`` from an ``adapter_config.json`` dict (inference mode)."""
    from peft import PeftConfig

    fields = {k: v for k, v in config.items() if not k.startswith("pemarith")}
    peft_type = str(fields.get("peft_type", "")).upper()
    if peft_type not in KINDS:
        raise PemarithError(
            f"cannot sweep a {fields.get('peft_type')!r} adapter in place; supported: {', '.join(KINDS)}"
        )
    cfg = PeftConfig.from_peft_type(**fields)
    cfg.inference_mode = True
    return cfg


def _kind(config: dict[str, Any]) -> str:
    return str(config.get("peft_type", "")).upper()


def incompatibilities(live: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why a composition with config ``new`` cannot be written into an adapter built from
    ``live``: another kind, or what the kind's ``live_check`` names (``pemarith.kinds``)."""
    if _kind(live) != _kind(new):
        return [f"peft_type {_kind(live)} vs {_kind(new)}"]
    return list(KINDS[_kind(new)].live_check(live, new))


def _as_float(arr: np.ndarray) -> np.ndarray:
    # pemarith holds bfloat16 as float32 (exactly); any other dtype goes through float32 too.
    if arr.dtype not in (np.float16, np.float32, np.float64):
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


class LiveAdapter:
    """A base model wrapped once in PEFT; :meth:`load` overwrites its adapter in place.

    >>> live = LiveAdapter(base_model, pem.output_config("factorwise", None))   # doctest: +SKIP
    >>> live.load(compose("l*a + (1-l)*b", mods, l=0.3))                       # doctest: +SKIP
    >>> live.model(**batch).logits                                             # doctest: +SKIP

    ``model`` is the ``PeftModel`` to evaluate (eval mode). ``with live.base():`` runs the base
    model with the adapter disabled (modules_to_save heads revert to the base model's).
    """

    def __init__(
        self, model: Any, config: dict[str, Any], adapter_name: str = DEFAULT_ADAPTER, merge: bool = True
    ):
        from peft import PeftModel

        if isinstance(model, PeftModel):
            raise PemarithError(
                "LiveAdapter takes the base model, not a PeftModel; "
                "pass model.get_base_model() or a fresh model"
            )
        self.adapter_name = adapter_name
        self.merge = merge
        self.merged = False
        self.loads = 0  # number of compositions written (for reports and tests)
        self._build(model, config)

    def _build(self, base: Any, config: dict[str, Any]) -> None:
        from peft import get_peft_model
        from peft.utils import get_peft_model_state_dict

        self.config = dict(config)
        self.model = get_peft_model(base, peft_config(config), adapter_name=self.adapter_name)
        self.model.eval()
        state = get_peft_model_state_dict(
            self.model, adapter_name=self.adapter_name, save_embedding_layers=False
        )
        # Only tensors that alias a live parameter can be written through; a copy would silently
        # absorb the write. Match by storage pointer, which state_dict() preserves.
        params = {p.data_ptr(): p for p in self.model.parameters()}
        params.update({b.data_ptr(): b for b in self.model.buffers()})
        self.targets: dict[str, Any] = {}
        for key, tensor in state.items():
            live = params.get(tensor.data_ptr())
            if live is None or live.shape != tensor.shape:
                raise PemarithError(f"internal: PEFT returned a copy for {key}; cannot write in place")
            self.targets[key] = live
        # The base weights a merge changes, saved once so that unmerging is exact.
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._originals: list[tuple[Any, Any]] = []
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                layer = module.get_base_layer()
                for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                    if p is not None:
                        self._originals.append((p, p.detach().clone()))

    def _unmerge(self) -> None:
        if self.merged:
            import warnings

            import torch

            with warnings.catch_warnings():  # "(IA)3 unmerge can be inaccurate": restored below
                warnings.simplefilter("ignore", UserWarning)
                self.model.unmerge_adapter()  # PEFT's bookkeeping; then the exact weights back
            with torch.no_grad():
                for param, original in self._originals:
                    param.data.copy_(original)
            self.merged = False

    def rebuild(self, config: dict[str, Any]) -> None:
        """Replace the adapter by a fresh one built from ``config`` (new targets, larger rank)."""
        self._unmerge()
        base = self.model.unload()
        self._build(base, config)

    @contextmanager
    def base(self) -> Iterator[Any]:
        """Run the base model: the adapter (and its modules_to_save copies) disabled."""
        was_merged = self.merged
        self._unmerge()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            if was_merged:
                self.model.merge_adapter()
                self.merged = True

    def load(
        self, pem: Any, mode: str = "factorwise", rank: int | None = None, keep: str | None = None
    ) -> None:
        """Write the composition ``pem`` into the live adapter (what ``pem.save`` would write)."""
        config = pem.output_config(mode, rank)
        self.load_tensors(pem.iter_tensors(mode=mode, rank=rank, keep=keep), config)

    def load_tensors(self, tensors: Iterable[tuple[str, np.ndarray]], config: dict[str, Any]) -> None:
        """Copy ``(saved_key, array)`` pairs described by adapter config ``config`` into the model."""
        import torch

        self._unmerge()
        problems = incompatibilities(self.config, config)
        if problems:
            if _kind(self.config) != _kind(config):
                raise CompatibilityError(
                    "cannot write this composition into the live adapter: " + "; ".join(problems)
                )
            self.rebuild(config)
        rule = KINDS[_kind(config)].live_tensor
        seen: set[str] = set()
        with torch.no_grad():
            for key, arr in tensors:
                target = self.targets.get(key)
                if target is None:
                    raise CompatibilityError(
                        f"the composition has a tensor {key} that the live "
                        f"adapter lacks{did_you_mean(key, self.targets)}"
                    )
                value = torch.from_numpy(_as_float(np.asarray(arr)))
                factor, pad_dim = rule(key, self.config, config)
                if factor != 1.0:
                    value = value * factor
                if tuple(value.shape) != tuple(target.shape):
                    value = self._pad(key, pad_dim, value, target)
                target.copy_(value)
                seen.add(key)
        missing = [k for k in self.targets if k not in seen]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CompatibilityError(
                f"the composition does not write {missing[0]}{more}; "
                "the live adapter would keep stale weights"
            )
        if self.merge:
            self.model.merge_adapter()
            self.merged = True
        self.loads += 1

    @staticmethod
    def _pad(key: str, dim: int | None, value: Any, target: Any) -> Any:
        """Zero-pad ``value`` along ``dim`` (the kind's ``live_tensor`` names it) to ``target``'s shape."""
        import torch

        ok = (
            dim is not None
            and value.dim() == target.dim()
            and all(v == t for i, (v, t) in enumerate(zip(value.shape, target.shape)) if i != dim)
            and value.shape[dim] <= target.shape[dim]
        )
        if not ok:
            raise CompatibilityError(
                f"{key}: shape {tuple(value.shape)} does not fit the live adapter's {tuple(target.shape)}"
            )
        out = torch.zeros(target.shape, dtype=value.dtype)
        out.narrow(dim, 0, value.shape[dim]).copy_(value)
        return out


def numeric_scores(task: Any, tasks: Sequence[Any], scores: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among ``evaluate_loaded``'s scores, named ``task.metric`` when a sweep
    tracks several tasks and ``metric`` when it tracks one."""
    prefix = f"{task.name}." if len(tasks) > 1 else ""
    return {
        prefix + k: float(v)
        for k, v in scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def primary_metrics(tasks: Sequence[Any], keys: Sequence[str]) -> list[str]:
    """Each task's first metric among ``keys`` (else its first key), named as
    :func:`numeric_scores` names them."""
    wanted = []
    for task in tasks:
        prefix = f"{task.name}." if len(tasks) > 1 else ""
        hit = next((prefix + m for m in task.metrics if prefix + m in keys), None)
        hit = hit or next((k for k in keys if k.startswith(prefix)), None)
        if hit:
            wanted.append(hit)
    return wanted


class Session:
    """The base model (loaded once, on first use), its live adapter, and the tasks' rows.

    ``config`` is a :class:`~pemarith.hf.sweep.SweepConfig` (model, tasks, mode, rank, splits,
    data_dir, seed, limit, batch_size, max_tokens, samples).

    ``probe()`` gives a composition with every term, whose ``output_config`` shapes the live
    adapter. It implements :class:`~pemarith.hf.evaluator.Predictor` (the
    :class:`~pemarith.hf.evaluator.Evaluator` that :func:`~pemarith.hf.sweep.run_sweep` uses,
    with per-row predictions).
    """

    def __init__(self, config: Any, probe: Callable[[], Any]):
        from .tasks import get_task

        self.config = config
        self.tasks = [get_task(t) for t in config.tasks]
        for task in self.tasks:
            for split in (config.val_split, config.test_split):
                if split and split not in task.splits:
                    raise PemarithError(
                        f"task {task.name} has no {split!r} split (it has "
                        f"{', '.join(task.splits)}); choose --val-split/--test-split"
                    )
        self.text_only = all(t.kind == "text" for t in self.tasks)
        self._probe = probe
        self._live: Any = None
        self._tok: Any = None
        self._rows: dict[tuple[str, str], Any] = {}

    @property
    def live(self) -> Any:
        if self._live is None:
            from .features import model_kind
            from .hardware import resolve
            from .inplace import LiveAdapter
            from .models import load_causal_lm, load_encoder

            cfg, first = self.config, self.tasks[0]
            device, dtype = getattr(cfg, "device", None), getattr(cfg, "dtype", None)
            placement = None if device is None and dtype is None else resolve(device, dtype)
            if model_kind(cfg.model) == "encoder":
                model, self._tok = load_encoder(
                    cfg.model, first.num_labels, first.problem_type, seed=0, placement=placement
                )
            else:
                model, self._tok = load_causal_lm(cfg.model, placement=placement)
            self._live = LiveAdapter(model, self._probe().output_config(cfg.mode, cfg.rank))
        return self._live

    def load(self, pem: Any, mode: str, rank: int | None, keep: str | None) -> None:
        self.live.load(pem, mode, rank, keep)

    def _data(self, task: Any, split: str) -> tuple[Any, str | None]:
        key = (task.name, split)
        if key not in self._rows:
            from .data import load_split, load_text

            rows = load_split(task, split, data_dir=self.config.data_dir, seed=self.config.seed)
            text = None
            if task.kind == "text" and task.source.format == "raw":
                text = load_text(task, split, data_dir=self.config.data_dir)
            elif task.kind != "text" and self.config.limit is not None:
                rows = rows[: self.config.limit]
            self._rows[key] = (rows, text)
        return self._rows[key]

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        """Numeric scores of the live model (or the base model) on ``split`` of every task."""
        from .evaluate import evaluate_loaded

        live, cfg = self.live, self.config
        options: dict[str, Any] = {"batch_size": cfg.batch_size, "seed": cfg.seed}
        if cfg.samples is not None:
            options["samples"] = cfg.samples
        out: dict[str, float] = {}
        for task in self.tasks:
            rows, text = self._data(task, split)
            max_tokens = (
                cfg.max_tokens if cfg.max_tokens is not None else (cfg.limit if task.kind == "text" else None)
            )
            if base:
                with live.base() as model:
                    scores = evaluate_loaded(
                        model, self._tok, task, rows, text=text, max_tokens=max_tokens, **options
                    )
            else:
                scores = evaluate_loaded(
                    live.model, self._tok, task, rows, text=text, max_tokens=max_tokens, **options
                )
            out.update(numeric_scores(task, self.tasks, scores))
        return out

    def predict(self, split: str) -> dict[str, dict[str, list]]:
        """The live model's per-row ``predictions`` and ``labels`` on ``split`` of every labelled
        task, ``{task: {"predictions": [...], "labels": [...]}}`` (for paired tests)."""
        from .evaluate import evaluate_loaded

        out = {}
        for task in self.tasks:
            if task.kind == "text":
                continue
            rows, text = self._data(task, split)
            scores = evaluate_loaded(
                self.live.model,
                self._tok,
                task,
                rows,
                text=text,
                batch_size=self.config.batch_size,
                seed=self.config.seed,
                predictions=True,
            )
            out[task.name] = {"predictions": scores["predictions"], "labels": scores["labels"]}
        return out

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        """Each task's first metric that the scores hold (``task.metric`` with several tasks)."""
        return primary_metrics(self.tasks, keys)
