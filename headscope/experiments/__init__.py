"""Scripted experiments: `headscope run spec.yaml` (see docs/experiments.md).

A YAML spec names a model, datasets and units of work (analyze / scan / evaluate); the runner
validates all of it before any forward pass, then writes a resumable results folder.

    >>> from headscope.experiments import load_spec, run_experiment
    >>> spec = load_spec("analyses/ablation_scan.yaml")          # validation only, no model
    >>> run_experiment(spec, "runs/ablation")                    # doctest: +SKIP
"""

from .runner import run_experiment
from .spec import Spec, Unit, check_model, load_spec, parse_spec
from .units import prepare

__all__ = ["Spec", "Unit", "check_model", "load_spec", "parse_spec", "prepare", "run_experiment"]
