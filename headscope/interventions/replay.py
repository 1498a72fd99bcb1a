"""The block replay behind the exact scan and path patching: one clean forward keeping every block's
input and keyword arguments, then blocks l.. rerun from that residual on stacked variants (an edit at
layer l cannot change anything below it). `replay_error` checks, at run time, that replaying reproduces
the model's own forward; where it does not, the callers run full forwards (`full_forward`).
"""

from __future__ import annotations

import warnings

import torch

from ..errors import InputError
from ..inputs.tokens import iter_batches, to_token_lists
from ..models.family import family_of
from ..models.info import model_device, model_info


def _expand(value, batch: int, copies: int, n_heads: int = 1):
    """Repeat a block argument along the batch axis for `copies` stacked variants: tensors with a
    batch axis first, also flattened batch x heads (Bloom's ALiBi is [batch * heads, 1, key])."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] in (batch, batch * n_heads):
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    if isinstance(value, tuple):
        return tuple(_expand(v, batch, copies, n_heads) for v in value)
    if isinstance(value, dict):
        return {k: _expand(v, batch, copies, n_heads) for k, v in value.items()}
    return value


_NOT_REPLAYED = ("past_key_values", "cache", "layer_past", "use_cache")


def _is_cache(value) -> bool:
    """A KV cache object (whatever a family calls the argument): a replay must not extend it."""
    return type(value).__name__.endswith("Cache") and hasattr(value, "get_seq_length")


class CleanRun:
    """One clean forward keeping the input of every block from the first scanned layer on, with
    the keyword arguments the model gave *that* block (masks and RoPE differ per layer on
    local/global models), the logits and the final-norm hidden states."""

    def __init__(self, model, batch, first_layer: int):
        self.inputs: dict[int, torch.Tensor] = {}
        self.args: dict[int, tuple] = {}
        self.kwargs: dict[int, dict] = {}
        handles = []

        def grab(layer):
            def pre_hook(module, args, kwargs):
                self.inputs[layer] = args[0].detach()
                self.args[layer] = args[1:]  # some families pass the mask positionally (BERT)
                self.kwargs[layer] = {k: v for k, v in kwargs.items() if k not in _NOT_REPLAYED and not _is_cache(v)}

            return pre_hook

        try:
            for layer in range(first_layer, len(model.blocks)):
                handles.append(model.blocks[layer].register_forward_pre_hook(grab(layer), with_kwargs=True))
            with torch.no_grad():
                self.logits, final = forward_keeping_final(model, batch.tokens, batch.attention_mask)
            self.final_hidden = final.detach()
        finally:  # hooks never outlive the call
            for h in handles:
                h.remove()

    def readout(self, batch, last_only: bool, readout: str):
        """The clean output the variants are compared with: logits or final hidden, all positions or
        each prompt's last real one."""
        full = self.logits if readout == "logits" else self.final_hidden
        return full[torch.arange(len(batch.index)), batch.lengths - 1][:, None] if last_only else full


def clean_readout(
    model, inputs, readout: str = "logits", *, batch_size: int = 8, prepend_bos: bool | None = None
) -> torch.Tensor:
    """The model's own output at each prompt's last real token, as the scan reads it for the clean run:
    "logits" [n_prompts, d_vocab] or "final_hidden" (the final norm's output) [n_prompts, d_model],
    float32 on the CPU. What a method compares its own variants with (Sahara's base subspace)."""
    if readout not in ("logits", "final_hidden"):
        raise InputError(f"readout={readout!r}: use 'logits' or 'final_hidden'")
    info = model_info(model)
    ids = to_token_lists(model, inputs, info, prepend_bos)
    out: torch.Tensor | None = None
    for batch in iter_batches(ids, batch_size, info.pad_token_id if info.pad_token_id is not None else 0):
        clean = CleanRun(model, batch, first_layer=len(model.blocks))  # no block inputs needed
        rows = clean.readout(batch, True, readout)[:, 0].float().cpu()
        out = torch.zeros(len(ids), rows.shape[-1]) if out is None else out
        out[batch.index] = rows
    assert out is not None  # to_token_lists refuses an empty prompt list
    return out


def forward_keeping_final(model, tokens, attention_mask):
    """The model's own forward on the model's device: (logits, the unembedding's input)."""
    got: dict[str, torch.Tensor] = {}

    def keep(module, args, kwargs):  # the unembedding's input: the final norm's output, or the family's readout
        got.update(h=args[0] if args else next(iter(kwargs.values())))

    handle = model.unembed.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        device = model_device(model)
        logits = model(tokens.to(device), attention_mask=attention_mask.to(device))
    finally:
        handle.remove()
    return logits, got["h"]


def _final_norm(model, x):
    """The model's own path from the last block's output to the unembedding's input: the final norm,
    or the family's own readout (BERT's masked-LM transform, `headscope.families.bert`)."""
    fam = family_of(model)
    if fam is not None and fam.readout is not None:
        return fam.readout(model, x)
    return model.ln_final(x) if hasattr(model, "ln_final") else x  # GPT-1: no final norm


def _logits(model, x):
    """The unembedding as the model's own forward applies it, with the family's final transform
    (Gemma's soft-cap, `headscope.families.gemma`)."""
    logits = model.unembed(x)
    fam = family_of(model)
    return fam.logits(model, logits) if fam is not None and fam.logits is not None else logits


def finish(model, x, layer, clean: CleanRun, copies: int, last_idx, readout: str = "logits"):
    """Run blocks layer.. on residual x [copies * B, pos, d], each with its own clean kwargs; then
    the final norm and (for "logits") the unembedding, of all positions or only of each row's last_idx."""
    batch, H = x.shape[0] // copies, model.cfg.n_heads
    for b in range(layer, len(model.blocks)):
        args = tuple(_expand(a, batch, copies, H) for a in clean.args[b])
        x = model.blocks[b](
            x, *args, **{k: _expand(v, batch, copies, H) for k, v in clean.kwargs[b].items()}, use_cache=False
        )
        x = x[0] if isinstance(x, tuple) else x
    if last_idx is not None:
        x = x[torch.arange(len(x)), last_idx][:, None]  # [rows, 1, d]
    x = _final_norm(model, x)
    return _logits(model, x) if readout == "logits" else x


def full_forward(model, batch, copies: int, last_idx, readout: str):
    """The model's own forward on `copies` stacked copies of the batch (the fallback: exact by construction)."""
    logits, final = forward_keeping_final(model, batch.tokens.repeat(copies, 1), batch.attention_mask.repeat(copies, 1))
    out = logits if readout == "logits" else final
    return out[torch.arange(len(out)), last_idx][:, None] if last_idx is not None else out


# Relative tolerance of the replay self-check (the issue: 1e-5 of the logits' scale).
REPLAY_RTOL = 1e-5
REPLAY_TOLERANCE = {torch.float32: REPLAY_RTOL, torch.float64: 1e-10}  # halves: 1e-2


def replay_error(model, clean: CleanRun, batch, layers, last_only: bool, readout: str) -> float | None:
    """Largest deviation, relative to the output's scale, of the block replay (two stacked copies,
    no edit) from the model's own clean forward, over `layers`; None if the replay crashes."""
    last = batch.lengths - 1
    ref = clean.readout(batch, last_only, readout)
    worst = 0.0
    try:
        with torch.no_grad():
            for layer in layers:
                got = finish(
                    model,
                    clean.inputs[layer].repeat(2, 1, 1),
                    layer,
                    clean,
                    2,
                    last.repeat(2) if last_only else None,
                    readout,
                )
                diff = (got.float() - ref.float().repeat(2, *([1] * (ref.ndim - 1)))).abs().max().item()
                worst = max(worst, diff / max(1.0, ref.float().abs().max().item()))
    except Exception:  # a replay that cannot even run is the clearest mismatch
        return None
    return worst


def warn_no_replay(model, err) -> None:
    what = "crashed" if err is None else f"deviates by {err:.2e} of the output scale"
    warnings.warn(
        f"scan: replaying blocks from the stored residual {what} on this model "
        f"({type(model.original_model).__name__}); every variant runs the model's own full forward "
        f"instead (same numbers as a per-head loop, slower).",
        RuntimeWarning,
        stacklevel=4,
    )


def replay_matches(model, clean: CleanRun, batch, layers, last_only: bool, readout: str) -> bool:
    """Whether the block replay reproduces the model's own forward on `layers` (within REPLAY_TOLERANCE
    of the output's scale); warns when it does not, so the caller's switch to full forwards is seen."""
    err = replay_error(model, clean, batch, layers, last_only, readout)
    if err is None or err > REPLAY_TOLERANCE.get(clean.logits.dtype, 1e-2):
        warn_no_replay(model, err)
        return False
    return True
