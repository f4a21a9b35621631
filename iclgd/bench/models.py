"""The randomly initialised models the benchmarks time (cost does not depend on training).

- `gpt2-small`: GPT-2 small's shape (Radford et al., 2019): 12 layers, d_model 768, 12 heads,
  vocabulary 50,257;
- `smollm2`: SmolLM2-135M's shape (Allal et al., 2025): Llama, 30 layers, d_model 576, 9 query
  and 3 key/value heads, d_mlp 1536, vocabulary 49,152, tied embeddings;
- `ginc`: the default GINC model (`iclgd.training.ginc.build_model`): GPT-NeoX, 2 layers,
  d_model 64, 2 heads, vocabulary 50.
`tiny=True` gives the same architecture at 2 layers and width 64 (tests). Eager attention, as
`iclgd.hooks.load_model` uses, so the plain and the hooked forward run the same kernels.
"""

from __future__ import annotations

from typing import Any


def hf_model(kind: str, tiny: bool = False) -> Any:
    """A randomly initialised HF causal LM of shape `kind` (seed 0), eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2-small":
        n, d, h = (2, 64, 4) if tiny else (12, 768, 12)
        model = GPT2LMHeadModel(GPT2Config(n_layer=n, n_embd=d, n_head=h, n_positions=1024,
                                           vocab_size=1000 if tiny else 50257,
                                           bos_token_id=0, eos_token_id=0,
                                           attn_implementation="eager"))
    elif kind == "smollm2":
        n, d, h, kv, mlp = (2, 64, 4, 2, 128) if tiny else (30, 576, 9, 3, 1536)
        model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=n, hidden_size=d, num_attention_heads=h, num_key_value_heads=kv,
            intermediate_size=mlp, vocab_size=1000 if tiny else 49152,
            max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True,
            attn_implementation="eager"))
    elif kind == "ginc":
        from iclgd.training.ginc import GincTrainConfig, build_model

        model = build_model(GincTrainConfig())
        model.config._attn_implementation = "eager"
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return model.eval()


def vocab_size(hf: Any) -> int:
    return int(hf.config.vocab_size)
