"""Option words the command line shares with the library, each set one `Literal` type.

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

# Where `headscope run` / `run_experiment` computes the units of work: this process, or Ray actors.
Executor = Literal["local", "ray"]
EXECUTORS: tuple[Executor, ...] = get_args(Executor)


def torch_dtype(name: DtypeName | None) -> torch.dtype | None:
    """The torch dtype of a `DtypeName` (None stays None: the loader's default, float32)."""
    import torch  # only when a dtype is asked for: the CLI parses its arguments without torch

    return None if name is None else getattr(torch, name)
