"""Option words that more than one package (or the command line and the library) share, each set one
`Literal` type, with the tuple of its words for validation messages and argument choices.

Torch-free on purpose: `headscope --help` builds its argument choices from these without importing
torch (see headscope/cli.py), and a spec's validation (headscope.experiments.spec) checks the same words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

# The dtypes a model can be loaded in (`--dtype`, a spec's `model: {dtype: ...}`).
DtypeName = Literal["float32", "bfloat16", "float16", "float64"]
DTYPE_NAMES: tuple[DtypeName, ...] = get_args(DtypeName)

# How a forward computes attention: "eager" (whole [head, q, k] patterns), "blocked" (rows a block at a
# time, headscope.capture.blocked), "auto" (blocked once a pattern would exceed the memory budget).
AttentionMode = Literal["auto", "eager", "blocked"]
ATTENTION_MODES: tuple[AttentionMode, ...] = get_args(AttentionMode)

# How much input the head atlas (`headscope report --quick/--full`, build_atlas) gives each analyzer.
Preset = Literal["quick", "full"]
PRESETS: tuple[Preset, ...] = get_args(Preset)

# How scan() measures each head: exactly (one forward per head), by attribution patching ("atp", or
# "atp*" with its attention-softmax correction), or an estimate whose top heads are then verified exactly.
ScanMethod = Literal["exact", "atp", "atp*", "atp+exact", "atp*+exact"]
SCAN_METHODS: tuple[ScanMethod, ...] = get_args(ScanMethod)

# How scan() and patch() batch their variant forwards: "auto" replays the clean run's prefix once it
# checked that the replay reproduces the model's logits, "off" runs full forwards, "force" replays unchecked.
Replay = Literal["auto", "off", "force"]
REPLAYS: tuple[Replay, ...] = get_args(Replay)

# Where `headscope run` / `run_experiment` computes the units of work: this process, or Ray actors.
Executor = Literal["local", "ray"]
EXECUTORS: tuple[Executor, ...] = get_args(Executor)


def torch_dtype(name: DtypeName | None) -> torch.dtype | None:
    """The torch dtype of a `DtypeName` (None stays None: the loader's default, float32)."""
    import torch  # only when a dtype is asked for: the CLI parses its arguments without torch

    return None if name is None else getattr(torch, name)
