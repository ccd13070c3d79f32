"""Helpers shared by the benchmarks (and by the tests that score the same kind of model)."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
from typing import Any, Callable

import torch
from torch import nn

GiB = 2 ** 30


def perturb_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Move every LayerNorm and Linear of ``model`` away from its initialisation (LayerNorm
    gains near 1, small biases, weights at 1/sqrt(fan-in)), so that its scores behave like a
    trained model's rather than an untouched one's."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layer_norm" in name:
                param.copy_(1.0 + 0.3 * noise if name.endswith("weight") else 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[1]))


def run_child(options: argparse.Namespace, field: str,
              measure: Callable[[argparse.Namespace], dict[str, Any]]) -> bool:
    """A bench measures memory in child processes of itself (``--measure X``): in such a child,
    set ``options.<field>`` to X, print ``measure(options)`` as JSON and return True."""
    if not options.measure:
        return False
    setattr(options, field, options.measure)
    print(json.dumps(measure(options)))
    return True


def machine() -> str:
    """CPU model (with family and model numbers), CPUs, RAM, Python and torch versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                        if ":" in line)
        info = {key.strip(): value.strip() for key, value in info.items()}
        model = (f"{info['model name']} (family {info['cpu family']} model {info['model']}, "
                 f"{'with' if 'avx512f' in info['flags'].split() else 'no'} AVX-512)")
    except (OSError, KeyError):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (f"{model}, {os.cpu_count()} CPUs, {ram:.1f} GiB RAM, Python "
            f"{platform.python_version()}, torch {torch.__version__}")
