"""Train the "shapes-vlm" testbed: a tiny LLaVA, from scratch, on the synthetic shapes world.

Two stages, both seeded (torch.manual_seed; every batch is drawn from numpy Generator([seed, step])):

1. Vision pretraining: the CLIP tower + two linear probes learn to name, from each patch token, the
   shape and colour (or "empty") of the 16x16 cell the patch lies in. Then the tower is frozen.
   (End to end from scratch, the LM's next-token loss alone teaches the tower slowly: ~0.75 image-QA.)
2. LLaVA training: projector + Llama LM, next-token loss on the answer tokens only, AdamW,
   linear warmup then cosine decay.

Writes data/models/shapes-vlm/ atomically (temp folder, then rename): model.safetensors (fp32),
config.json (LlavaConfig), tokenizer files, train_log.json. One thread throughout.

    OMP_NUM_THREADS=1 .venv/bin/python analyses/train_shapes_vlm.py            # ~20 min
    OMP_NUM_THREADS=1 .venv/bin/python analyses/train_shapes_vlm.py --quick    # ~3 min, smoke test
    OMP_NUM_THREADS=1 .venv/bin/python analyses/train_shapes_vlm.py --eval-only  # re-measure the shipped one
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from headscope.vision import shapes as W
from headscope.vision import shapes_eval as E

# Architecture: kept here (and in config.json); headscope/testbeds/shapes_vlm.py only reads the config.
ARCH = {
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 8,
    "n_kv_heads": 4,
    "d_head": 16,
    "d_mlp": 384,
    "v_width": 64,
    "v_layers": 2,
    "v_heads": 4,
    "v_mlp": 128,
}


def build_config(vocab_size: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    a = ARCH
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=a["d_model"],
        intermediate_size=a["d_mlp"],
        num_hidden_layers=a["n_layers"],
        num_attention_heads=a["n_heads"],
        num_key_value_heads=a["n_kv_heads"],
        head_dim=a["d_head"],
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=W.BOS_ID,
        pad_token_id=W.PAD_ID,
        eos_token_id=W.PAD_ID,
        attn_implementation="eager",
    )
    vision = CLIPVisionConfig(
        hidden_size=a["v_width"],
        intermediate_size=a["v_mlp"],
        num_hidden_layers=a["v_layers"],
        num_attention_heads=a["v_heads"],
        image_size=W.IMAGE_SIZE,
        patch_size=W.PATCH,
        num_channels=3,
        projection_dim=a["v_width"],
        attn_implementation="eager",
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=W.IMAGE_TOKEN_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    cfg.architectures = ["LlavaForConditionalGeneration"]  # TransformerLens picks its adapter from this
    cfg._attn_implementation = "eager"
    return cfg


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


# ----------------------------------------------------------------------------- stage 1: vision


def _cell_labels(scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scene and patch (row-major 4x4) the shape index (len(SHAPES) = empty) and colour index of its cell."""
    per_row = W.IMAGE_SIZE // W.PATCH
    cols = list(W.COLOURS)
    shape_lab = torch.full((len(scenes), per_row * per_row), len(W.SHAPES))
    colour_lab = torch.full((len(scenes), per_row * per_row), len(cols))
    for b, scene in enumerate(scenes):
        for p in range(per_row * per_row):
            r, c = divmod(p, per_row)
            cell = W.CELLS[(r * W.PATCH // W.CELL) * 2 + c * W.PATCH // W.CELL]
            o = scene.at(cell)
            if o is not None:
                shape_lab[b, p], colour_lab[b, p] = W.SHAPES.index(o.shape), cols.index(o.colour)
    return shape_lab, colour_lab


def patch_features(model, pixels):
    """The features LLaVA feeds its projector: vision_feature_layer=-1 hidden states, CLS dropped."""
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def pretrain_vision(model, steps: int, batch: int, lr: float, seed: int, log: dict):
    tower = model.model.vision_tower
    width = model.config.vision_config.hidden_size
    probes = torch.nn.ModuleList(
        [torch.nn.Linear(width, len(W.SHAPES) + 1), torch.nn.Linear(width, len(W.COLOURS) + 1)]
    )
    opt = torch.optim.AdamW(list(tower.parameters()) + list(probes.parameters()), lr=lr, weight_decay=0.01)
    tower.train()
    t0, curve = time.time(), []
    for step in range(steps):
        rng = np.random.default_rng([seed, 1, step])
        scenes = [W.sample_scene(rng) for _ in range(batch)]
        shape_lab, colour_lab = _cell_labels(scenes)
        feats = patch_features(model, W.render_batch(scenes))
        ls, lc = probes[0](feats), probes[1](feats)
        loss = F.cross_entropy(ls.flatten(0, 1), shape_lab.flatten()) + F.cross_entropy(
            lc.flatten(0, 1), colour_lab.flatten()
        )
        _set_lr(opt, lr_at(step, steps, lr, max(1, steps // 20)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            acc_s = (ls.argmax(-1) == shape_lab).float().mean().item()
            acc_c = (lc.argmax(-1) == colour_lab).float().mean().item()
            curve.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "patch_shape_acc": round(acc_s, 4),
                    "patch_colour_acc": round(acc_c, 4),
                    "t": round(time.time() - t0, 1),
                }
            )
            print("vision", curve[-1], flush=True)
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)  # frozen from here on: the LM learns to read a fixed visual code
    log["vision"] = {"steps": steps, "batch": batch, "lr": lr, "wall_s": round(time.time() - t0, 1), "curve": curve}


# ----------------------------------------------------------------------------- stage 2: LLaVA


def make_batch(rng, batch: int, text_fraction: float):
    items = W.sample_items(int(rng.integers(2**31)), batch, text_fraction=text_fraction)
    items.sort(key=lambda it: it.has_image)  # text rows first; pixel_values are the image rows' in order
    seqs = [W.encode_item(it) for it in items]
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((batch, width), W.PAD_ID)
    labels = torch.full((batch, width), -100)
    for r, (s, p) in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        labels[r, p : len(s)] = torch.tensor(s[p:])  # loss only on the answer tokens
    scenes = [it.scene for it in items if it.has_image]
    return ids, labels, (W.render_batch(scenes) if scenes else None)


def train_llava(
    model, steps: int, batch: int, lr: float, warmup: int, seed: int, text_fraction: float, eval_every: int, log: dict
):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )
    probe = E.default_eval_sets(seed=E.EVAL_SEED + 7, n_image=120, n_pope_scenes=1, n_describe=1)["image_qa"]
    t0, curve, ema = time.time(), [], None
    for step in range(steps):
        model.train()
        ids, labels, pixels = make_batch(np.random.default_rng([seed, 2, step]), batch, text_fraction)
        kw = {} if pixels is None else {"pixel_values": pixels}
        logits = model(input_ids=ids, **kw).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        _set_lr(opt, lr_at(step, steps, lr, warmup))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % eval_every == 0 or step == steps - 1:
            model.eval()
            acc = E.image_qa_accuracy(model, probe).accuracy  # a separate probe set, not the reported one
            curve.append(
                {
                    "step": step,
                    "loss_ema": round(ema, 4),
                    "probe_image_qa": round(acc, 4),
                    "t": round(time.time() - t0, 1),
                }
            )
            print("llava", curve[-1], flush=True)
    model.eval()
    log["llava"] = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "warmup": warmup,
        "text_fraction": text_fraction,
        "wall_s": round(time.time() - t0, 1),
        "curve": curve,
    }


SMALL_SETS = {"n_image": 120, "n_pope_scenes": 30, "n_describe": 12}
NOISE = 0.3


def evaluate(model) -> dict:
    sets = E.default_eval_sets()
    img = E.image_qa_accuracy(model, sets["image_qa"])
    txt = E.text_qa_accuracy(model, sets["text_qa"])
    pp = E.pope(model, sets["pope"])
    texts = E.describe(model, sets["describe"])
    ch = E.chair(sets["describe"], texts)
    exact = float(np.mean([t == " ".join(W.describe_text(s)) for s, t in zip(sets["describe"], texts)]))
    # The same metrics on the leading part of each set (= default_eval_sets(**SMALL_SETS)), which the
    # tests recompute on the loaded bridge: a check of the shipped numbers, not a fresh estimate.
    k = SMALL_SETS
    small_pope = E.pope_metrics(
        [it.meta["label"] for it in sets["pope"][: 2 * k["n_pope_scenes"]]], pp.said_yes[: 2 * k["n_pope_scenes"]]
    )
    small = {
        "sets": k,
        "image_qa": round(float(np.mean(img.correct[: k["n_image"]])), 4),
        "pope": {m: round(v, 4) for m, v in small_pope.items()},
        "chair": E.chair(sets["describe"][: k["n_describe"]], texts[: k["n_describe"]]),
    }
    # Noisy images (shapes.render noise=NOISE): the regime where the model hallucinates, for VHR/VAR.
    nimg = E.image_qa_accuracy(model, sets["image_qa"], noise=NOISE)
    npp = E.pope(model, sets["pope"], noise=NOISE)
    nch = E.chair(sets["describe"], E.describe(model, sets["describe"], noise=NOISE))
    noisy = {
        "noise": NOISE,
        "image_qa": round(nimg.accuracy, 4),
        "pope": {m: round(getattr(npp, m), 4) for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")},
        "pope_per_probe": {m: round(v, 4) for m, v in npp.per_probe.items()},
        "chair": {m: round(v, 4) if isinstance(v, float) else v for m, v in nch.items()},
    }
    return {
        "image_qa": round(img.accuracy, 4),
        "image_qa_per_kind": {k: round(v, 4) for k, v in img.per_kind.items()},
        "text_qa": round(txt.accuracy, 4),
        "text_qa_per_kind": {k: round(v, 4) for k, v in txt.per_kind.items()},
        "pope": {k: round(v, 4) if isinstance(v, float) else v for k, v in pp.to_dataframe().iloc[0].to_dict().items()},
        "chair": {k: round(v, 4) if isinstance(v, float) else v for k, v in ch.items()},
        "describe_exact_match": round(exact, 4),
        "describe_examples": texts[:5],
        "small_sets": small,
        "noisy": noisy,
        "n": {"image_qa": img.n, "text_qa": txt.n, "pope": pp.n, "describe": len(texts)},
    }


def save(model, log: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.to_json_file(str(tmp / "config.json"))
        W.shapes_tokenizer().save_pretrained(str(tmp))
        (tmp / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)  # some writers create 0600 files; the checkpoint is shared
        os.chmod(tmp, 0o755)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reevaluate(out: Path) -> None:
    from headscope.fileio import atomic_write
    from headscope.testbeds.shapes_vlm import shapes_vlm_hf, train_log

    torch.set_num_threads(1)
    log = train_log(out)
    t1 = time.time()
    log["heldout"] = evaluate(shapes_vlm_hf(out))
    log["eval_wall_s"] = round(time.time() - t1, 1)
    print(json.dumps(log["heldout"], indent=1), flush=True)
    atomic_write(out / "train_log.json", lambda p: p.write_text(json.dumps(log, indent=1) + "\n"))


def _portable(path: Path) -> str:
    """A path as the log records it: relative to the repository when inside it (no machine paths)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def main(argv=None):
    from headscope.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision-steps", type=int, default=600)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--text-fraction", type=float, default=0.15)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--quick", action="store_true", help="short schedule for a smoke test (~3 min)")
    ap.add_argument("--out", type=Path, default=None, help="default: data/models/shapes-vlm")
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="re-measure the checkpoint in --out and rewrite its train_log.json 'heldout' (no training)",
    )
    args = ap.parse_args(argv)
    out = args.out or data_dir() / "models" / "shapes-vlm"
    if args.eval_only:
        return reevaluate(out)
    if args.quick:
        args.vision_steps, args.steps, args.eval_every = 150, 400, 100
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(build_config(len(W.vocabulary())))
    n_params = sum(p.numel() for p in model.parameters())
    log = {
        "seed": args.seed,
        "args": {k: _portable(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "arch": ARCH,
        "n_params": n_params,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(f"shapes-vlm: {n_params:,} parameters", flush=True)
    t0 = time.time()
    pretrain_vision(model, args.vision_steps, 128, args.vision_lr, args.seed, log)
    train_llava(
        model, args.steps, args.batch, args.lr, args.warmup, args.seed, args.text_fraction, args.eval_every, log
    )
    log["train_wall_s"] = round(time.time() - t0, 1)
    t1 = time.time()
    log["heldout"] = evaluate(model)
    log["eval_wall_s"] = round(time.time() - t1, 1)
    print(json.dumps(log["heldout"], indent=1), flush=True)
    save(model, log, out)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
