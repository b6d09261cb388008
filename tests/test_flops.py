"""The full per-token FLOPs count (every matmul) against a hand count, and its use by both MFU and the study."""

import pytest

from growlm.modeling import count_parameters, llama_config
from growlm.train.flops import flops_per_token, full_flops_per_token


def test_full_count_matches_a_hand_count_for_small_8l():
    # small-8L with the 4k tokenizer: H = 128, 4 query heads and 2 KV heads of 32 (A = 128, K = 64), F = 352.
    config = llama_config("small-8L", vocab_size=4096)
    T = 128
    q, k, v, o = 128 * 128, 128 * 64, 128 * 64, 128 * 128
    mlp = 3 * 128 * 352
    scores_and_values = 2 * 128 * T + 2 * 128 * T  # QK^T and AV, per token and layer, forward
    lm_head = 4096 * 128
    forward = 8 * (2 * (q + k + v + o + mlp) + scores_and_values) + 2 * lm_head
    assert full_flops_per_token(config, T) == 3 * forward == 13_565_952
    # The paper's count is 6 * N_ne: no LM head, no attention scores, but the norm gains.
    assert flops_per_token(config, T, "paper") == 6 * count_parameters(config)["non_embedding"]
    assert flops_per_token(config, T, "full") == full_flops_per_token(config, T)


def test_tied_head_still_costs_a_matmul():
    untied = llama_config("tiny-2L", vocab_size=4096)
    tied = llama_config("tiny-2L", vocab_size=4096, tie_word_embeddings=True)
    assert full_flops_per_token(tied, 64) == full_flops_per_token(untied, 64)


def test_unknown_count_is_an_error():
    with pytest.raises(ValueError, match="unknown FLOPs count 'exact'"):
        flops_per_token(llama_config("tiny-2L"), 64, "exact")
