"""An un-bridged copy of a bridge's HF model, for independent reference computations.

TransformerBridge swaps its own attention modules into the HF model it wraps, so calling
`bridge.original_model(...)` runs headscope's hooked attention again and cannot serve as an
independent check. `plain_hf_copy` rebuilds the HF architecture from its config (eager attention,
so `output_attentions=True` works) and loads the same weights and RoPE buffers.
"""

from __future__ import annotations

import torch

from headscope.models.compat import set_attn_implementation

_WRAPPER = "_original_component."


def plain_hf_copy(bridge) -> torch.nn.Module:
    """Fresh HF model with the bridge's weights, no bridge components inside.

    Example:
        >>> from headscope.testing import planted_model
        >>> model, truth = planted_model()
        >>> hf = plain_hf_copy(model)
        >>> len(hf(torch.tensor([[1, 5, 6]]), output_attentions=True).attentions)
        2
    """
    wrapped = bridge.original_model
    config = wrapped.config.__class__.from_dict(wrapped.config.to_dict())
    set_attn_implementation(config, "eager")
    fresh = type(wrapped)(config).eval()
    wanted = set(fresh.state_dict())
    state = {}
    for key, value in wrapped.state_dict().items():
        plain = key.replace(_WRAPPER, "")
        if plain in wanted:  # skips the bridge's alias entries such as self_attn.q.weight
            state[plain] = value
    fresh.load_state_dict(state, strict=True)
    # Non-persistent buffers (RoPE inv_freq) are not in state_dict but may be hand-set.
    sources = {name.replace(_WRAPPER, ""): buf for name, buf in wrapped.named_buffers()}
    for name, buf in fresh.named_buffers():
        if name in sources:
            buf.copy_(sources[name])
    return fresh.to(next(wrapped.parameters()).device)
