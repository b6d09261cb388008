"""FLOPs accounting: training cost for comparisons and the model FLOPs behind MFU."""

from __future__ import annotations

import os

import torch
from transformers import PretrainedConfig

from growlm.modeling import count_parameters

# Dense bf16 peak TFLOPs per device, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS_BY_GPU = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def training_flops(config: PretrainedConfig, tokens: int) -> int:
    """Training cost as compared across runs (training.md §6-7, growth.md §9): 6 * N_nonemb * tokens."""
    return 6 * count_parameters(config)["non_embedding"] * tokens


def model_flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    """FLOPs per trained token used for MFU: 6 * N_matmul + 12 * L * H * seq_len.

    N_matmul is the non-embedding parameter count plus the LM head (a real matmul; the input embedding is a
    lookup and is left out), the usual PaLM convention and the one of the HF baseline benchmark, so MFUs compare.
    12 * L * H * seq_len is the attention-score term (QK^T and AV, forward + backward, no causal discount).
    """
    head = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    n_matmul = count_parameters(config)["non_embedding"] + head
    return 6 * n_matmul + 12 * config.num_hidden_layers * config.hidden_size * seq_len


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
