"""Instruction-following evaluation of a chat model: prompts, greedy answers, reference NLL.

Used by the 4.6 reproduction (:mod:`pemarith.scenarios.detox_instruct`). Prompts are built with
the tokenizer's own chat template (SmolLM2-Instruct's adds its default system message when none
is given), so the model sees what it was instruction-tuned on.

- :func:`chat_text`: one conversation as text (a user turn, and the assistant's answer when
  given: the training text of an instruction pair).
- :func:`generate_answers`: greedy answers to instructions, batched with left padding.
- :func:`reference_nll`: the mean negative log-likelihood per token of reference answers given
  their instructions (an offline stand-in for a helpfulness judgement; see the scenario).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import features as F


def chat_text(tok: Any, instruction: str, answer: str | None = None) -> str:
    """The chat-template text of ``instruction`` (and ``answer``); ends with the generation
    prompt of the assistant's turn when ``answer`` is None."""
    messages = [{"role": "user", "content": instruction}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)


def _prompt_ids(tok: Any, instruction: str, max_prompt: int) -> list[int]:
    ids = tok(chat_text(tok, instruction), add_special_tokens=False).input_ids
    return ids[-max_prompt:]


def generate_answers(
    model: Any,
    tok: Any,
    instructions: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_prompt: int = 256,
) -> list[str]:
    """Greedy answers (deterministic) to each instruction, special tokens removed."""
    import torch

    feats = [{"input_ids": _prompt_ids(tok, i, max_prompt)} for i in instructions]
    out: list[str] = [""] * len(feats)
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for idx, chunk in F.batches(feats, batch_size):
            batch = F.pad(chunk, tok.pad_token_id, side="left")
            gen = model.generate(
                input_ids=batch["input_ids"].to(dev),
                attention_mask=batch["attention_mask"].to(dev),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t.strip()
    return out


def reference_nll(
    model: Any,
    tok: Any,
    instructions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 8,
    max_length: int = 384,
) -> dict[str, float]:
    """``{"nll": mean NLL per answer token, "tokens": answer tokens}`` of the reference answers.

    Each row is the chat text of (instruction, answer); only the answer's tokens (everything
    after the assistant's generation prompt) are scored.
    """
    import torch

    feats = []
    for ins, ans in zip(instructions, answers, strict=True):
        prompt = tok(chat_text(tok, ins), add_special_tokens=False).input_ids
        full = tok(chat_text(tok, ins, ans), add_special_tokens=False).input_ids
        target = (
            full[len(prompt) :] if full[: len(prompt)] == prompt else full[-max(1, len(full) - len(prompt)) :]
        )
        room = max(max_length - len(target), 1)
        prompt = prompt[-room:]
        feats.append({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target})
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for _, chunk in F.batches(feats, batch_size):
            batch = F.pad(chunk, tok.pad_token_id, side="right")
            labels = batch.pop("labels").to(dev)
            logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = labels[:, 1:]
            mask = tgt != -100
            picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total -= float((picked * mask).sum())
            count += int(mask.sum())
    return {"nll": total / count if count else math.nan, "tokens": count}
