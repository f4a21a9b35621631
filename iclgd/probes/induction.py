"""Induction-head scores per layer and head (Olsson et al. 2022, "In-context Learning and
Induction Heads").

Two scores, each `[n_layers, n_heads]`:

- **prefix matching** (behavioural): sequences of `T` random tokens repeated twice,
  `r_0 .. r_{T-1} r_0 .. r_{T-1}`. For every query in the second copy, at position `T + i`
  (token `r_i`), the head's attention to position `i + 1` (the token right after the earlier
  occurrence of `r_i`; for `i = T - 1` that is position `T`, the first token of the copy) is
  read from `hook_pattern`; averaged over the `T` queries and the sequences. In [0, 1];
  uniform attention over the causal window would give about `1 / (1.5 T)`.
  The random tokens are drawn without replacement when `T <= d_vocab` (so every token of a copy
  occurs once and "its earlier occurrence" is unique), with replacement otherwise.
- **copying** (weights): the OV circuit of head h as a map from the attended token to the
  logits, `M_h = W_E W_V^h W_O^h W_U` (`[d_vocab, d_vocab]`, row = attended token). Olsson et al.
  and Elhage et al. 2021 read copying from its eigenvalues: `copying = Σ λ_i / Σ |λ_i|` over the
  eigenvalues of `M_h`, in [-1, 1]; 1 = the head raises the logit of whatever token it attends
  to along every direction it writes. The non-zero eigenvalues of `M_h` equal those of the
  `[d_head, d_head]` matrix `W_O^h (W_U W_E) W_V^h`, which is what is computed.
  A second reading, `copying_top1`: the fraction of (a sample of) source tokens `t` for which
  `argmax_j M_h[t, j] = t`, i.e. the head's direct OV-path contribution is largest on the
  attended token's own logit (chance: 1 / d_vocab).

Both copying readings use the raw weights (`iclgd.hooks.attention_weights`, the input embedding
and the unembedding) and therefore **ignore LayerNorm** (the pre-attention and final norms'
scales and biases, and the centring) and attention biases: they describe the direct path
through this head only, not the model's actual computation. Prefix matching is measured on the
real forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from iclgd.errors import IclgdError
from iclgd.hooks.batching import BatchSize, model_device, run_batched
from iclgd.hooks.capture import capture
from iclgd.hooks.names import act_names
from iclgd.hooks.weights import attention_weights


@dataclass(frozen=True)
class InductionScores:
    """Per-head induction scores, each `[n_layers, n_heads]` (float64, CPU)."""

    prefix_matching: Float[Tensor, "n_layers n_heads"]
    copying: Float[Tensor, "n_layers n_heads"]
    copying_top1: Float[Tensor, "n_layers n_heads"]
    seq_len: int
    n_seqs: int
    seed: int
    n_copy_tokens: int

    def top(self, score: str = "prefix_matching", k: int = 3) -> list[dict[str, float | int]]:
        """The `k` best heads by `score`: `[{"layer", "head", "score"}, ...]`, best first."""
        t = getattr(self, score)
        flat = t.reshape(-1)
        idx = torch.argsort(flat, descending=True)[: min(k, flat.numel())]
        n_heads = t.shape[1]
        return [{"layer": int(i) // n_heads, "head": int(i) % n_heads, "score": float(flat[i])}
                for i in idx]


def repeated_random_tokens(
    n_seqs: int, seq_len: int, d_vocab: int, seed: int
) -> Int[Tensor, "n_seqs two_seq_len"]:
    """`[n_seqs, 2 * seq_len]`: each row a random sequence followed by an exact copy of it.

    Tokens are uniform on `0 .. d_vocab - 1`, without replacement within a row when
    `seq_len <= d_vocab`.
    """
    if seq_len < 2 or n_seqs < 1:
        raise IclgdError(f"need seq_len >= 2 and n_seqs >= 1, got {seq_len}, {n_seqs}")
    gen = torch.Generator().manual_seed(int(seed))
    if seq_len <= d_vocab:
        first = torch.stack([torch.randperm(d_vocab, generator=gen)[:seq_len] for _ in range(n_seqs)])
    else:
        first = torch.randint(0, d_vocab, (n_seqs, seq_len), generator=gen)
    return torch.cat([first, first], dim=1)


def prefix_matching_from_patterns(
    pattern: Float[Tensor, "batch n_heads q_pos k_pos"], seq_len: int
) -> Float[Tensor, " n_heads"]:
    """Mean attention from second-copy queries to the token after their earlier occurrence.

    `pattern` holds the rows of queries `seq_len .. 2 seq_len - 1` (q_pos = seq_len) over all
    key positions; query `seq_len + i` should attend key `i + 1`.
    """
    q = torch.arange(seq_len)
    picked = pattern[:, :, q, q + 1]  # [batch, n_heads, seq_len]
    return picked.to(torch.float64).mean(dim=(0, 2))


def _embeddings(model: Any) -> tuple[Tensor, Tensor]:
    """Raw `W_E [d_vocab, d_model]` and `W_U [d_model, d_vocab]` of an HF-backed model."""
    from iclgd.hooks import hf_module

    hf = hf_module(model)
    w_e = hf.get_input_embeddings().weight.detach()
    out = hf.get_output_embeddings()
    if out is None:
        raise IclgdError(f"{type(hf).__name__} has no output embedding: copying scores need an unembedding")
    return w_e, out.weight.detach().T


def copying_scores(
    model: Any, *, n_copy_tokens: int = 256, seed: int = 0
) -> tuple[Float[Tensor, "n_layers n_heads"], Float[Tensor, "n_layers n_heads"]]:
    """`(copying, copying_top1)` per head from raw weights (module docstring; LayerNorm ignored).

    `copying_top1` uses `min(n_copy_tokens, d_vocab)` source tokens (all of them when the
    vocabulary is that small; else a seeded random sample); `n_copy_tokens=0` skips it (NaN).
    """
    w_e, w_u = _embeddings(model)
    w_e, w_u = w_e.to(torch.float64), w_u.to(torch.float64)
    d_vocab = w_e.shape[0]
    g = w_u @ w_e  # [d_model, d_model]
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    eig = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    top1 = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    n_src = min(int(n_copy_tokens), d_vocab)
    if n_src > 0:
        gen = torch.Generator().manual_seed(int(seed))
        src = torch.arange(d_vocab) if n_src == d_vocab else torch.randperm(d_vocab, generator=gen)[:n_src]
        e_src = w_e[src]  # [S, d_model]
    for layer in range(n_layers):
        attn = attention_weights(model, layer)
        for h in range(n_heads):
            w_v = attn.W_V[attn.kv_head_of(h)].to(torch.float64)  # [d_model, d_head]
            w_o = attn.W_O[h].to(torch.float64)  # [d_head, d_model]
            lam = torch.linalg.eigvals(w_o @ g @ w_v)
            total = lam.abs().sum()
            eig[layer, h] = float(lam.real.sum() / total) if total > 0 else 0.0
            if n_src > 0:
                logits = (e_src @ w_v @ w_o) @ w_u  # [S, d_vocab]
                top1[layer, h] = float((logits.argmax(dim=-1) == src).to(torch.float64).mean())
    return eig, top1


def induction_scores(
    model: Any, *, seq_len: int | None = None, n_seqs: int = 16, seed: int = 0,
    batch_size: BatchSize = 16, n_copy_tokens: int = 256,
) -> InductionScores:
    """Prefix-matching and copying scores of every head (Olsson et al. 2022; module docstring).

    Args:
        model: a TransformerBridge with `blocks.{l}.attn.hook_pattern` hook points.
        seq_len: length `T` of the random half; default `min(50, n_ctx // 2, d_vocab)`.
        n_seqs: number of repeated sequences; seed: their RNG seed (and the copying token sample).
        n_copy_tokens: source tokens for `copying_top1` (0 skips it).

    Returns:
        `InductionScores` with `prefix_matching`, `copying`, `copying_top1` `[n_layers, n_heads]`.
    """
    n_ctx, d_vocab = int(model.cfg.n_ctx), int(model.cfg.d_vocab)
    n_layers = int(model.cfg.n_layers)
    if seq_len is None:
        seq_len = min(50, n_ctx // 2, d_vocab)
    if 2 * seq_len > n_ctx:
        raise IclgdError(f"2 * seq_len = {2 * seq_len} exceeds the model's context n_ctx={n_ctx}: pass a smaller seq_len")
    tokens = repeated_random_tokens(n_seqs, seq_len, d_vocab, seed)
    names = act_names("pattern", n_layers)

    def step(lo: int, hi: int) -> Tensor:
        rows = tokens[lo:hi]
        got = capture(model, rows, names, positions=slice(seq_len, 2 * seq_len))
        return torch.stack([prefix_matching_from_patterns(got[name], seq_len) * rows.shape[0]
                            for name in names])

    sums = torch.zeros(n_layers, int(model.cfg.n_heads), dtype=torch.float64)
    for part in run_batched(n_seqs, batch_size, step, default=16, device=model_device(model),
                            what="induction scores"):
        sums += part
    prefix = sums / n_seqs
    eig, top1 = copying_scores(model, n_copy_tokens=n_copy_tokens, seed=seed)
    return InductionScores(prefix, eig, top1, int(seq_len), int(n_seqs), int(seed),
                           min(int(n_copy_tokens), d_vocab))
