"""FLOPs accounting: training cost for comparisons and the model FLOPs behind MFU."""

from __future__ import annotations

import math
import os

import torch
from transformers import PretrainedConfig

from growlm.modeling import count_parameters, head_dim, layer_tensor_shapes

# Dense bf16 peak TFLOPs per device, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS_BY_GPU = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def training_flops(non_embedding_params: float, tokens: float) -> float:
    """Training cost in the paper's convention (training.md §6-7, growth.md §9): 6 * N_ne * tokens."""
    return 6 * non_embedding_params * tokens


FLOPS_COUNTS = ("paper", "full")


def full_flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    """Training FLOPs per token of every matmul the model runs: the one count behind MFU and the study's "full" sp.

    Per layer: the q, k, v, o projections (H*A + 2*H*K + A*H weights) and the MLP (3*H*F), 2 FLOPs per weight
    and token forward; the attention scores QK^T and the weighted sum AV, 2*A*T each forward (T = seq_len, no
    causal discount, as the kernels compute full tiles). Plus the LM head (V*H; it runs even when tied to the
    embedding, whose lookup is free). Forward + backward = 3x forward. Norms, activations and the softmax are
    not matmuls and are left out (< 1% at these sizes).
    """
    H, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    A = config.num_attention_heads * head_dim(config)
    per_layer_weights = sum(math.prod(shape) for shape in layer_tensor_shapes(config).values() if len(shape) == 2)
    forward = 2 * (L * per_layer_weights + V * H) + L * 4 * A * seq_len
    return 3 * forward


def flops_per_token(config: PretrainedConfig, seq_len: int, count: str) -> int:
    """`paper`: 6 * N_ne (growth.md §9, the paper's convention); `full`: `full_flops_per_token`."""
    if count == "paper":
        return training_flops(count_parameters(config)["non_embedding"], 1)
    if count == "full":
        return full_flops_per_token(config, seq_len)
    raise ValueError(f"unknown FLOPs count {count!r}; use one of {FLOPS_COUNTS}")


def default_peak_tflops() -> float | None:
    """Peak TFLOPs of the local accelerator: $GROWLM_PEAK_TFLOPS, else a known GPU's table value, else None."""
    if os.environ.get("GROWLM_PEAK_TFLOPS"):
        return float(os.environ["GROWLM_PEAK_TFLOPS"])
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((peak for key, peak in PEAK_TFLOPS_BY_GPU.items() if key in name), None)
    return None


def mfu(tokens_per_s: float, flops_per_token: int, *, num_devices: int, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation over all devices, or None when the peak is unknown (e.g. on CPU)."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (num_devices * peak_tflops * 1e12)
