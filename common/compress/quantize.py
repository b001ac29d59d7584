"""Quantization: dynamic int8 Linear layers and int8 (weight-only) embedding tables on the
CPU (``torch.ao.quantization``), half precision on a GPU.

Dynamic quantization stores int8 weights and quantizes activations on the fly, so it
needs no calibration data; embeddings are quantized per row with float scales
(``float_qparams_weight_only_qconfig``), the only scheme PyTorch's quantized embedding
supports. fp16/bf16 is for GPUs only: CPU kernels for them are slower than fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

from common.errors import ConfigError

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def int8_linear(model: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` as a dynamically quantized int8 Linear."""
    return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def int8_embeddings(model: nn.Module) -> nn.Module:
    """Every ``nn.Embedding`` table as int8 rows with a float scale and offset per row."""
    return quantize_dynamic(model.eval(), {nn.Embedding: float_qparams_weight_only_qconfig},
                            dtype=torch.quint8)


def half(model: nn.Module, kind: str) -> nn.Module:
    """The model in fp16 or bf16 (GPU only; the pooled features are cast back to fp32)."""
    if kind not in HALF:
        raise ConfigError(f"half precision {kind!r} is not one of {tuple(HALF)}.")
    if not torch.cuda.is_available():
        raise ConfigError(f"{kind} is a GPU step and no GPU is present; use int8 on a CPU.")
    return model.to(device="cuda", dtype=HALF[kind])
