"""Write a random TinyLlama-1.1B-shaped Llama checkpoint: the 2.1 GB bfloat16 base of issue 21.

No download: hidden 2048, intermediate 5632, 22 layers, 32 query / 4 KV heads, vocabulary
32000, untied embeddings, the shapes and names `transformers.LlamaForCausalLM` saves, values
drawn from N(0, 0.02^2) with numpy and rounded to bfloat16 on the bits (pemarith.dtypes).
Speed of `bake` (and of PEFT's merge) does not depend on the values, so this stands in for the
real checkpoint; both tools load it as one.

    python benchmarks/make_base.py DIR [--dtype bfloat16|float32] [--layers 22]
    python benchmarks/bake_vs_peft.py --base DIR     # the base is already bfloat16: no --dtype

DIR must not exist (nothing is overwritten).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_vs_peft import HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, VOCAB  # noqa: E402


def tensor_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of every tensor of the checkpoint, in the order they are written."""
    head = HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * head, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * head, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return shapes | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def config(layers: int, dtype: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the checkpoint directory to create (must not exist)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from pemarith.io import SafetensorsWriter

    code = {"bfloat16": "BF16", "float32": "F32"}[args.dtype]
    shapes = tensor_shapes(args.layers)
    args.out.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(args.seed)
    writer = SafetensorsWriter(
        args.out / "model.safetensors", [(k, code, s) for k, s in shapes.items()], {"format": "pt"}
    )
    for name, shape in shapes.items():
        if len(shape) == 1:
            value = np.ones(shape, np.float32)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        writer.write(name, value)
    writer.close()
    (args.out / "config.json").write_text(json.dumps(config(args.layers, args.dtype), indent=2) + "\n")
    size = (args.out / "model.safetensors").stat().st_size
    print(f"{args.out}: {len(shapes)} tensors, {size / 1e9:.2f} GB, {args.dtype}")


if __name__ == "__main__":
    main()
