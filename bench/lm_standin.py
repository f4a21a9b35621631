"""A stand-in for a real pretrained LM, to size the demo's LM sections without the weights.

`python bench/lm_standin.py OUT [--tiny]` saves a randomly initialised Llama with SmolLM2-135M's
shape (30 layers, d_model 576, 9 query / 3 key-value heads, d_mlp 1536, vocabulary 49,152, tied
embeddings) and a word-level tokenizer over the built-in tasks' words, so `iclgd demo --lm OUT
--lm-tasks capitals,antonyms` runs every LM part at the real model's cost (prompts are about as
long as with SmolLM2's BPE tokenizer: one token per word instead of ~1.5). Its numbers mean
nothing: the weights are random.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path


def task_words() -> list[str]:
    """Every whitespace-separated word of the built-in tasks and of the default template."""
    words = {"Input:", "Output:"}
    for path in resources.files("iclgd.data.builtin").iterdir():
        if path.name.endswith(".jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                for value in row.values():
                    words.update(str(value).split())
    return sorted(words)


def word_tokenizer(vocab_size: int):
    """A WordLevel tokenizer: id 0 is BOS/EOS/PAD/UNK, then the task words, then `w{i}`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + task_words()
    words += [f"w{i}" for i in range(len(words), vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:vocab_size])},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<unk>",
                                   eos_token="<unk>", pad_token="<unk>")


def build(out: str | Path, *, tiny: bool = False, seed: int = 0) -> Path:
    """Save the stand-in (or a 2-layer, 64-wide one with `tiny`) to `out`; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = 512 if tiny else 49152
    cfg = LlamaConfig(
        num_hidden_layers=2 if tiny else 30, hidden_size=64 if tiny else 576,
        num_attention_heads=4 if tiny else 9, num_key_value_heads=2 if tiny else 3,
        intermediate_size=128 if tiny else 1536, vocab_size=vocab, tie_word_embeddings=True,
        max_position_embeddings=512 if tiny else 8192, rms_norm_eps=1e-5,
        initializer_range=0.041 if not tiny else 0.02, bos_token_id=0, eos_token_id=0)
    out = Path(out)
    LlamaForCausalLM(cfg).save_pretrained(out)
    word_tokenizer(vocab).save_pretrained(out)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    print(build(a.out, tiny=a.tiny))
