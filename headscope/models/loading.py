"""load_model: one entry point for the bundled model, the testbeds, local HF folders and cached hub ids."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import HeadscopeError, InputError, ModelNotFoundError
from . import bundled
from .catalog import TESTBEDS, Testbed, register_testbed, testbed_params
from .compat import no_runtime_installs, reports_patterns_after
from .family import attention_route_for, bridge_overrides, family_of, prepare_bridge, refusal
from .info import is_encoder_decoder, model_info, record_facts, tokenizer_adds_bos

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hf_offline():
    """Force Hugging Face offline mode for the duration of a load.

    The env vars only count if set before huggingface_hub is imported, so the module constant
    is patched as well; without this TransformerLens spends about a minute retrying the hub
    for processor files that a local folder does not have.
    """
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_const = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_const
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def quiet_loading():
    """No transformers progress bar ("Loading weights") while headscope loads a model: a loaded model is
    one line of the user's own output, not a bar per load. The user's setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def boot(
    source: str,
    name: str,
    device,
    dtype,
    prepend_bos: bool | None,
    *,
    hf_model=None,
    tokenizer=None,
    offline: bool = True,
    n_devices: int | None = None,
):
    """Boot a TransformerBridge offline from a folder / cached id, or around an in-memory HF model
    (`hf_model` + `tokenizer`; `source` then only names it), and label it `name`. `offline=False`
    lets the hub be reached (an explicit `allow_download`); installing packages is refused either way."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    extra = {} if hf_model is None else {"hf_model": hf_model, "tokenizer": tokenizer}
    if n_devices and n_devices > 1:  # the bridge splits the layers over cuda:0..n-1 (exclusive with device)
        extra.update(n_devices=n_devices, device=None)
    network = hf_offline if offline else contextlib.nullcontext  # one fresh context per use
    if prepend_bos is None:  # read before the bridge reconfigures the tokenizer to always add BOS
        with network():
            prepend_bos = _original_adds_bos(source, tokenizer)
    config = hf_model.config if hf_model is not None else _config_or_none(source, network)
    if config is not None:
        refuse_family(config, name)
        overrides = bridge_overrides(config)
        if overrides:  # fields the family boots the bridge with (the HF model and its config are untouched)
            extra["hf_config_overrides"] = overrides
    try:
        with network(), no_runtime_installs(), quiet_loading():
            bridge = TransformerBridge.boot_transformers(
                source, **{"device": device, **extra}, dtype=dtype or torch.float32
            )
    except (HeadscopeError, MemoryError, torch.OutOfMemoryError):  # already clear, or not the family's fault
        raise
    except Exception as exc:  # the adapter fails on this family or config: say which, keep the cause
        model_type = getattr(config, "model_type", None)
        hf_class = (
            type(hf_model).__name__ if hf_model is not None else (getattr(config, "architectures", None) or ["?"])[0]
        )
        raise InputError(
            f"TransformerLens cannot bridge {name!r} (model_type {model_type!r}, HF class {hf_class}): "
            f"{type(exc).__name__}: {exc}. Fix: docs/architectures.md lists the families headscope is checked "
            "on; this one needs TransformerLens support or a headscope family module."
        ) from exc
    bridge.eval()
    # BOS as the model sees it in normal use: the tokenizer's own default, unless a testbed says.
    if prepend_bos is not None:
        bridge.cfg.default_prepend_bos = prepend_bos
    prepare_bridge(bridge)
    record_facts(bridge, name=name)
    _refuse_headless(bridge)
    if reports_patterns_after(bridge):  # HF computes attention: headscope routes it through its own forward
        route = attention_route_for(bridge)
        if route is not None:
            route(bridge)
    return bridge


def _config_or_none(source: str, network):
    """The HF config of a folder / cached id, or None when it cannot be read (the boot then says why)."""
    from transformers import AutoConfig

    try:
        with network():
            return AutoConfig.from_pretrained(source)
    except Exception:  # no config to read here: the bridge's own error is the clearer one
        return None


def refuse_family(config, name: str) -> None:
    """Raise InputError when the model's family (`headscope.models.family.family_of`) refuses this
    config, naming the family and its reason."""
    reason = refusal(config)
    if reason:
        fam = family_of(config)
        family = fam.name if fam is not None else getattr(config, "model_type", "?")
        raise InputError(
            f"headscope does not analyse {name!r}: the {family} family "
            f"(model_type {getattr(config, 'model_type', None)!r}) is refused: {reason}"
        )


def _refuse_headless(bridge) -> None:
    """A hybrid whose bridge maps none of its attention layers as `attn` has no heads headscope can read:
    refuse it at boot (every engine would refuse it later), naming its layer kinds."""
    if is_encoder_decoder(bridge):
        return  # three stacks of heads: capture_seq2seq reads them
    info = model_info(bridge)
    if not info.attention_layers:
        try:
            info.check_head(0, 0)  # the InputError naming the layer kinds
        except InputError as err:
            model_type = getattr(bridge.original_model.config, "model_type", None)
            raise InputError(f"headscope does not analyse {info.name!r} (model_type {model_type!r}): {err}") from None


def _original_adds_bos(source: str, tokenizer=None) -> bool | None:
    """Whether the model's own tokenizer adds BOS by default (None if it cannot be read offline:
    TransformerLens's default then stands)."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception:  # no tokenizer files: keep the bridge's default
            return None
    return tokenizer_adds_bos(tokenizer)


def _load_smollm2(cache_dir, device, dtype):
    folder = bundled.smollm2_fp32_dir(cache_dir)
    # SmolLM2's tokenizer adds no BOS; its "bos" <|im_start|> opens chat turns, so raw text is
    # fed as is (TL would otherwise prepend id 1 to every prompt).
    return boot(str(folder), bundled.SMOLLM2_NAME, device, dtype, prepend_bos=False)


register_testbed(Testbed(bundled.SMOLLM2_NAME, load=_load_smollm2, summary="the bundled default model"))
ALIASES: dict[str | None, str] = {
    None: bundled.SMOLLM2_NAME,
    "default": bundled.SMOLLM2_NAME,
    "smollm2": bundled.SMOLLM2_NAME,
}


def _hub_id_is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed ids raise; they are simply not cached
        return False
    return isinstance(hit, str)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    cache_dir=None,
    device=None,
    dtype=None,
    allow_download: bool = False,
    n_devices: int | None = None,
    **params,
):
    """Load a model as a TransformerLens 4.x TransformerBridge.

    Args:
        name_or_path: None (the bundled SmolLM2-135M-Instruct), a bundled name
            or testbed (see `headscope.models.TESTBEDS`), a local Hugging Face model folder, or a hub id
            already in the local HF cache.
        cache_dir: where the bundled model's fp32 cache lives (default: HEADSCOPE_CACHE or
            ~/.cache/headscope).
        device, dtype: passed to the bridge (default CPU, float32).
        n_devices: split a Hugging Face model's layers over this many GPUs (one copy of a model too big
            for one GPU; TransformerBridge's n_devices). Not for the bundled model or testbeds.
        allow_download: let an uncached hub id go to the network. Off by default: headscope
            is used offline and an uncached id fails at once with a clear message.
        **params: parameters of a testbed that takes them (the in-code test models
            "testing:tiny" / "testing:planted": n_layers, seed, ...).

    Example:
        >>> import headscope
        >>> model = headscope.load_model()          # ~1 s after the first, cached, load
        >>> model.cfg.n_layers, model.cfg.n_heads
        (30, 9)
    """
    if name_or_path is None:
        name_or_path = ALIASES[None]  # the bundled model
    key = ALIASES.get(name_or_path, name_or_path) if isinstance(name_or_path, str) else name_or_path
    if isinstance(key, str) and key.lower() in TESTBEDS:
        name = key.lower()
        if n_devices and n_devices > 1:
            raise ModelNotFoundError(
                f"n_devices={n_devices}: {name} loads on one device (it is small). "
                "Fix: load it with device='cuda' and no n_devices."
            )
        bridge = TESTBEDS[name].load(cache_dir, device, dtype, **testbed_params(name, params))
        record_facts(bridge, testbed=name)
        return bridge
    if params:
        raise ModelNotFoundError(
            f"parameters {sorted(params)} are only for testbeds that take them "
            f"(e.g. 'testing:tiny'), not for {name_or_path!r}. Fix: drop them."
        )

    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but not a Hugging Face model folder (no config.json). "
                "Fix: point at the folder written by save_pretrained()."
            )
        return boot(str(path), str(name_or_path), device, dtype, prepend_bos=None, n_devices=n_devices)

    text = str(name_or_path)
    # Hub ids are 'org/name' or, for the oldest models, a bare name ('gpt2', 'bert-base-uncased').
    looks_like_hub_id = (
        text.count("/") <= 1
        and text.strip() == text
        and text
        and not text.startswith((".", "/", "~"))
        and not text.endswith("/")
    )
    if not looks_like_hub_id:
        raise ModelNotFoundError(
            f"Unknown model {text!r}: not a bundled model or testbed, not an existing folder, and not a hub id "
            f"('org/name' or a bare name such as 'gpt2'). {_did_you_mean(text)}"
            "Fix: headscope.load_model() for the bundled SmolLM2, or pass a local model folder."
        )
    if _hub_id_is_cached(text):
        return boot(
            text, text, device, dtype, prepend_bos=None, n_devices=n_devices
        )  # offline: every file is in the cache
    if allow_download:
        return boot(text, text, device, dtype, prepend_bos=None, offline=False, n_devices=n_devices)
    from huggingface_hub.constants import HF_HUB_CACHE

    raise ModelNotFoundError(
        f"{text!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and headscope does not "
        "download models by default (this machine may be offline; hub retries would hang). "
        f"{_did_you_mean(text)}Fix: download it where there is network (huggingface-cli download "
        f"{text}) and copy the cache or the saved folder here, pass a local folder, or call "
        "load_model(..., allow_download=True) if this machine can reach the hub."
    )


def known_names() -> list[str]:
    """The names load_model knows without a path or the hub: bundled models, testbeds and aliases."""
    return sorted(set(TESTBEDS) | {a for a in ALIASES if isinstance(a, str)})


def _did_you_mean(text: str) -> str:
    """'Did you mean …?' for a name close to a bundled model or testbed (a typo is not a hub id), then the
    list of names headscope knows."""
    import difflib

    names = known_names()
    close = difflib.get_close_matches(text.lower(), names, n=3, cutoff=0.6)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}Bundled models and testbeds: {', '.join(names)}. "
