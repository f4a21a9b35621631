"""iclgd's hooked (linear) self-attention transformer on float tokens (von Oswald et al. 2023).

`LinearAttentionTransformer` is a `transformer_lens` `HookedRootModule` whose hook points carry
the TransformerLens names (`blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_q/hook_k/hook_v/
hook_attn_scores/hook_pattern/hook_z`, `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_resid_mid`,
`blocks.{l}.hook_mlp_out` and `blocks.{l}.mlp.hook_pre/hook_post` when an MLP is on,
`blocks.{l}.hook_resid_post`), so `run_with_hooks`, `run_with_cache` and generic probes work on it.
Inputs are float token vectors `[batch, pos, d_model]` (no embedding, no unembedding); the output is
the final residual stream.

One block (pre-LayerNorm when `layer_norm`):
    resid_mid  = resid_pre + attn(ln1(resid_pre))
    resid_post = resid_mid + mlp(ln2(resid_mid))          (when `mlp`)
Attention, per head h, with TransformerLens row-vector weights `W_Q[h] [d_model, d_head]`:
    q_j = x_j W_Q[h],  k_i = x_i W_K[h],  v_i = x_i W_V[h]
    score_{j,i} = attn_scale * q_j . k_i          (von Oswald: attn_scale = 1, no 1/sqrt(d_head))
    linear:  pattern_{j,i} = score_{j,i} * allowed_{j,i}   (divided by #allowed keys of row j only
             when `normalize_by_keys`; von Oswald does not divide: the 1/n sits in P, von Oswald et al.
             2023, Proposition 1)
    softmax: pattern = softmax over allowed keys (a row with no allowed key gets pattern 0)
    z_j = sum_i pattern_{j,i} v_i,   attn_out_j = sum_h z_j[h] W_O[h]
`hook_attn_scores` holds the scaled scores with disallowed entries set to 0 (linear) or -inf
(softmax); `hook_pattern` the weights actually applied.

Which positions are keys/values (`allowed`): every query position reads the key positions `i` with
`key_mask[i]` true (and `i <= j` when `causal`). The mask comes from, in order of precedence:
`key_mask` (`[pos]` or `[batch, pos]`, bool) passed to `forward`; else the `n_context` leading
context positions, plus the positions `>= n_context` (the queries) only when `include_query`.
`n_context` defaults to `pos - 1` (one query token at the end). von Oswald's setting is
`include_query=False`: keys/values are the context tokens only; queries come from every token.

Papers write weights in column-vector form (`k = W_K e`, update `e += P W_V e (W_K e)^T W_Q e`).
TransformerLens stores the transposes: `W_K_row[h] = W_K_col^T` (`[d_model, d_head]`) and
`W_O_row[h] = P^T` (`[d_head, d_model]`). `set_layer_weights` takes column-form matrices and does
the transposition. With `use_projection=False` there is no W_O parameter: heads are summed with an
identity projection (needs `d_head == d_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from iclgd.errors import IclgdError
from iclgd.hooks.types import AttentionWeights, MLPWeights

ATTENTION_KINDS = ("linear", "softmax")


@dataclass
class LinearAttentionConfig:
    """Architecture of a `LinearAttentionTransformer`.

    `attention`: "linear" or "softmax", or one of them per layer (a tuple of length `n_layers`).
    `d_head` defaults to `d_model`; `d_mlp` to `4 * d_model`. `shared_weights`: one set of weights
    used by every layer (a recurrent model, von Oswald's "shared" LSA). `init_scale`: weights are
    drawn N(0, init_scale / fan_in) (von Oswald's VarianceScaling(0.002 / L), normal rather than
    truncated normal). `n_ctx` is the longest accepted sequence.

    Example:
        >>> cfg = LinearAttentionConfig(d_model=3, n_layers=2, shared_weights=True)
        >>> cfg.d_head, cfg.attention
        (3, 'linear')
    """

    d_model: int
    n_layers: int = 1
    n_heads: int = 1
    d_head: int | None = None
    attention: str | tuple[str, ...] = "linear"
    include_query: bool = False
    use_projection: bool = True
    shared_weights: bool = False
    layer_norm: bool = False
    mlp: bool = False
    d_mlp: int | None = None
    act_fn: str = "gelu"
    causal: bool = False
    attn_scale: float = 1.0
    normalize_by_keys: bool = False
    init_scale: float = 1.0
    n_ctx: int = 1024
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_ctx"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise IclgdError(
                    f"LinearAttentionConfig.{name} must be an integer >= 1, got {value!r}"
                )
        if self.d_head is None:
            self.d_head = self.d_model
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.d_head < 1 or self.d_mlp < 1:
            raise IclgdError(f"d_head and d_mlp must be >= 1, got {self.d_head}, {self.d_mlp}")
        kinds = (
            (self.attention,) * self.n_layers
            if isinstance(self.attention, str)
            else tuple(self.attention)
        )
        if len(kinds) != self.n_layers or any(k not in ATTENTION_KINDS for k in kinds):
            raise IclgdError(
                f"attention must be one of {ATTENTION_KINDS} or a tuple of them of length "
                f"n_layers={self.n_layers}, got {self.attention!r}"
            )
        if self.shared_weights and len(set(kinds)) > 1:
            raise IclgdError("shared_weights needs the same attention kind in every layer")
        self.attention = kinds[0] if len(set(kinds)) == 1 else kinds
        if not self.use_projection and self.d_head != self.d_model:
            raise IclgdError("use_projection=False needs d_head == d_model (identity projection)")
        if self.act_fn not in ("gelu", "relu"):
            raise IclgdError(f"act_fn must be 'gelu' or 'relu', got {self.act_fn!r}")
        if (
            not math.isfinite(self.attn_scale)
            or not math.isfinite(self.init_scale)
            or self.init_scale < 0
        ):
            raise IclgdError("attn_scale and init_scale must be finite (init_scale >= 0)")
        if not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise IclgdError(f"dtype must be a floating torch dtype, got {self.dtype!r}")

    def attention_kind(self, layer: int) -> str:
        """ "linear" or "softmax" for `layer`."""
        return self.attention if isinstance(self.attention, str) else self.attention[layer]

    @property
    def head_dim(self) -> int:
        """`d_head`, resolved (defaults to `d_model`)."""
        return self.d_model if self.d_head is None else self.d_head

    @property
    def mlp_dim(self) -> int:
        """`d_mlp`, resolved (defaults to `4 * d_model`)."""
        return 4 * self.d_model if self.d_mlp is None else self.d_mlp


def _param(
    shape: tuple[int, ...], fan_in: int, cfg: LinearAttentionConfig, gen: torch.Generator
) -> nn.Parameter:
    std = math.sqrt(cfg.init_scale / fan_in)
    return nn.Parameter(
        torch.randn(shape, generator=gen, dtype=torch.float64).mul_(std).to(cfg.dtype)
    )


def _make_attn_params(
    cfg: LinearAttentionConfig, gen: torch.Generator
) -> dict[str, nn.Parameter | None]:
    h, m, d = cfg.n_heads, cfg.d_model, cfg.head_dim
    return {
        "W_Q": _param((h, m, d), m, cfg, gen),
        "W_K": _param((h, m, d), m, cfg, gen),
        "W_V": _param((h, m, d), m, cfg, gen),
        "W_O": _param((h, d, m), h * d, cfg, gen) if cfg.use_projection else None,
    }


def _make_mlp_params(cfg: LinearAttentionConfig, gen: torch.Generator) -> dict[str, nn.Parameter]:
    m, f = cfg.d_model, cfg.mlp_dim
    return {
        "W_in": _param((m, f), m, cfg, gen),
        "b_in": nn.Parameter(torch.zeros(f, dtype=cfg.dtype)),
        "W_out": _param((f, m), f, cfg, gen),
        "b_out": nn.Parameter(torch.zeros(m, dtype=cfg.dtype)),
    }


class _LayerNorm(nn.Module):
    def __init__(self, w: nn.Parameter, b: nn.Parameter) -> None:
        super().__init__()
        self.w, self.b = w, b
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-5)
        return self.hook_normalized(x * self.w + self.b)


class _Attention(nn.Module):
    W_Q: nn.Parameter
    W_K: nn.Parameter
    W_V: nn.Parameter
    W_O: Tensor  # a parameter, or an identity buffer without an output projection

    def __init__(
        self, cfg: LinearAttentionConfig, kind: str, params: dict[str, nn.Parameter | None]
    ) -> None:
        super().__init__()
        self.cfg, self.kind = cfg, kind
        for name in ("W_Q", "W_K", "W_V"):
            setattr(self, name, params[name])
        if params["W_O"] is not None:
            self.W_O = params["W_O"]
        else:
            eye = torch.eye(cfg.d_model, dtype=cfg.dtype).expand(cfg.n_heads, -1, -1).clone()
            self.register_buffer("W_O", eye)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        q = self.hook_q(torch.einsum("bpm,hmd->bphd", x, self.W_Q))
        k = self.hook_k(torch.einsum("bpm,hmd->bphd", x, self.W_K))
        v = self.hook_v(torch.einsum("bpm,hmd->bphd", x, self.W_V))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
        if self.cfg.attn_scale != 1.0:
            scores = scores * self.cfg.attn_scale
        if self.kind == "linear":
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, 0.0))
            pattern = scores
            if self.cfg.normalize_by_keys:
                pattern = pattern / allowed.sum(-1, keepdim=True).clamp(min=1)
        else:
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
            pattern = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O)


class _MLP(nn.Module):
    def __init__(self, cfg: LinearAttentionConfig, params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.W_in, self.b_in, self.W_out, self.b_out = (
            params[k] for k in ("W_in", "b_in", "W_out", "b_out")
        )
        self.act = F.gelu if cfg.act_fn == "gelu" else F.relu
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        return self.hook_post(self.act(pre)) @ self.W_out + self.b_out


class _Block(nn.Module):
    ln1: _LayerNorm
    ln2: _LayerNorm
    mlp: _MLP

    def __init__(self, cfg: LinearAttentionConfig, layer: int, params: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn = _Attention(cfg, cfg.attention_kind(layer), params["attn"])
        if cfg.layer_norm:
            self.ln1 = _LayerNorm(params["ln1_w"], params["ln1_b"])
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint()
        if cfg.mlp:
            self.mlp = _MLP(cfg, params["mlp"])
            self.hook_mlp_out = HookPoint()
            if cfg.layer_norm:
                self.ln2 = _LayerNorm(params["ln2_w"], params["ln2_b"])

    def forward(self, resid: Tensor, allowed: Tensor) -> Tensor:
        resid = self.hook_resid_pre(resid)
        x = self.ln1(resid) if self.cfg.layer_norm else resid
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(x, allowed)))
        if self.cfg.mlp:
            x = self.ln2(resid) if self.cfg.layer_norm else resid
            resid = resid + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(resid)


class LinearAttentionTransformer(HookedRootModule):
    """Hooked self-attention transformer on float tokens; see the module docstring for the maths.

    `cfg` carries `n_layers`, `n_heads`, `d_model`, `d_head`, `n_ctx` like a TransformerLens
    config. Per-layer weights in TransformerLens shapes: `blocks[l].attn.W_Q [n_heads, d_model,
    d_head]`, `blocks[l].attn.W_O [n_heads, d_head, d_model]`; stacked over layers: `W_Q`, `W_K`,
    `W_V` `[n_layers, n_heads, d_model, d_head]`, `W_O [n_layers, n_heads, d_head, d_model]`.
    With `shared_weights` every block holds the same parameter objects. `seed` fixes the init.
    `takes_float_inputs` tells `iclgd.hooks.capture` to pass float token vectors, not token ids.

    Example:
        >>> lsa = LinearAttentionTransformer(LinearAttentionConfig(d_model=3, n_layers=1))
        >>> acts = capture(lsa, torch.randn(2, 5, 3), act_name("attn_out", 0))
        >>> tuple(acts["blocks.0.hook_attn_out"].shape), tuple(attention_weights(lsa, 0).W_Q.shape)
        ((2, 5, 3), (1, 3, 3))
    """

    takes_float_inputs = True

    def __init__(self, cfg: LinearAttentionConfig, *, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(cfg, LinearAttentionConfig):
            raise IclgdError(f"cfg must be a LinearAttentionConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)

        def layer_params() -> dict[str, Any]:
            p: dict[str, Any] = {"attn": _make_attn_params(cfg, gen)}
            if cfg.mlp:
                p["mlp"] = _make_mlp_params(cfg, gen)
            if cfg.layer_norm:
                for name in ("ln1", "ln2"):
                    p[f"{name}_w"] = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
                    p[f"{name}_b"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
            return p

        shared = layer_params() if cfg.shared_weights else None
        self.blocks = nn.ModuleList(
            [_Block(cfg, layer, shared or layer_params()) for layer in range(cfg.n_layers)]
        )
        self.setup()

    def block(self, layer: int) -> _Block:
        """Block `layer` (typed access to `blocks[layer]`)."""
        block = self.blocks[layer]
        assert isinstance(block, _Block)
        return block

    # ----------------------------------------------------------------------------- forward
    def key_mask(
        self, batch: int, pos: int, *, n_context: int | None = None, key_mask: Tensor | None = None
    ) -> Bool[Tensor, "batch 1 q_pos k_pos"]:
        """The boolean `allowed[b, 0, j, i]` (query j may read key/value i); rules in the module doc."""
        device = self.block(0).attn.W_Q.device
        if key_mask is not None:
            if key_mask.dtype != torch.bool or key_mask.shape not in ((pos,), (batch, pos)):
                raise IclgdError(
                    f"key_mask must be a bool tensor of shape [pos] or [batch, pos] = [{batch}, {pos}], "
                    f"got {key_mask.dtype} {tuple(key_mask.shape)}"
                )
            keys = key_mask.to(device).reshape(-1, 1, 1, pos)
        else:
            n_ctx = pos - 1 if n_context is None else n_context
            if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 0 <= n_ctx <= pos:
                raise IclgdError(
                    f"n_context must be an integer in [0, pos={pos}], got {n_context!r}"
                )
            keys = torch.arange(pos, device=device) < n_ctx
            if self.cfg.include_query:
                keys = torch.ones(pos, dtype=torch.bool, device=device)
            keys = keys.reshape(1, 1, 1, pos)
        if self.cfg.causal:
            keys = keys & torch.ones(pos, pos, dtype=torch.bool, device=device).tril()
        return keys

    def forward(
        self,
        tokens: Float[Tensor, "batch pos d_model"],
        *,
        n_context: int | None = None,
        key_mask: Bool[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Final residual stream for float `tokens` (dtype must equal `cfg.dtype`)."""
        if (
            not isinstance(tokens, Tensor)
            or tokens.ndim != 3
            or tokens.shape[-1] != self.cfg.d_model
        ):
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise IclgdError(
                f"tokens must be a float tensor [batch, pos, d_model={self.cfg.d_model}], got {shape}"
            )
        if tokens.dtype != self.cfg.dtype:
            raise IclgdError(
                f"tokens dtype {tokens.dtype} != model dtype {self.cfg.dtype}: cast them first"
            )
        batch, pos, _ = tokens.shape
        if pos < 1 or batch < 1 or pos > self.cfg.n_ctx:
            raise IclgdError(
                f"need 1 <= pos <= n_ctx={self.cfg.n_ctx} and batch >= 1, got {tuple(tokens.shape)}"
            )
        allowed = self.key_mask(batch, pos, n_context=n_context, key_mask=key_mask)
        resid = tokens
        for block in self.blocks:
            resid = block(resid, allowed)
        return resid

    # ----------------------------------------------------------------------------- weights
    def _stack(self, name: str) -> Tensor:
        return torch.stack([getattr(self.block(i).attn, name) for i in range(self.cfg.n_layers)])

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack("W_O")

    def _check_layer(self, layer: int) -> None:
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int)
            or not 0 <= layer < self.cfg.n_layers
        ):
            raise IclgdError(f"layer must be in [0, {self.cfg.n_layers}), got {layer!r}")

    def attention_weights(self, layer: int) -> AttentionWeights:
        """Raw per-head weights of `layer` (detached; no biases; `n_key_value_heads = n_heads`)."""
        self._check_layer(layer)
        a = self.block(layer).attn
        return AttentionWeights(
            W_Q=a.W_Q.detach().clone(),
            W_K=a.W_K.detach().clone(),
            W_V=a.W_V.detach().clone(),
            W_O=a.W_O.detach().clone(),
            n_heads=self.cfg.n_heads,
            n_key_value_heads=self.cfg.n_heads,
            layer=layer,
            processing="raw",
        )

    def mlp_weights(self, layer: int) -> MLPWeights:
        """Raw MLP weights of `layer` (`W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`)."""
        self._check_layer(layer)
        if not self.cfg.mlp:
            raise IclgdError("this model has no MLP (LinearAttentionConfig.mlp=False)")
        m = self.block(layer).mlp
        return MLPWeights(
            W_in=m.W_in.detach().clone(),
            W_out=m.W_out.detach().clone(),
            b_in=m.b_in.detach().clone(),
            b_out=m.b_out.detach().clone(),
            layer=layer,
        )

    def _assign(self, target: Tensor, value: Tensor, what: str) -> None:
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(target.shape):
            raise IclgdError(
                f"{what} must have shape {tuple(target.shape)}, got {tuple(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise IclgdError(f"{what} has non-finite entries")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))

    def set_layer_weights(
        self,
        layer: int,
        *,
        W_Q: Tensor | None = None,
        W_K: Tensor | None = None,
        W_V: Tensor | None = None,
        P: Tensor | None = None,
        head: int = 0,
    ) -> None:
        """Set one head's weights from column-vector-form matrices, as written in the papers.

        `W_Q`, `W_K`, `W_V`: `[d_head, d_model]` (`q = W_Q e`); `P`: `[d_model, d_head]` (the output
        projection, `attn_out = P z`). Stored transposed (TransformerLens rows: `W_Q[h] = W_Q^T`,
        `W_O[h] = P^T`). With shared weights this sets the weights of every layer.
        """
        self._check_layer(layer)
        if not 0 <= head < self.cfg.n_heads:
            raise IclgdError(f"head must be in [0, {self.cfg.n_heads}), got {head}")
        a = self.block(layer).attn
        for name, value in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V)):
            if value is not None:
                self._assign(getattr(a, name)[head], torch.as_tensor(value).T, f"{name}^T")
        if P is not None:
            if not self.cfg.use_projection:
                raise IclgdError("this model has no output projection (use_projection=False)")
            self._assign(a.W_O[head], torch.as_tensor(P).T, "P^T")

    def set_mlp_weights(
        self,
        layer: int,
        *,
        W_in: Tensor | None = None,
        b_in: Tensor | None = None,
        W_out: Tensor | None = None,
        b_out: Tensor | None = None,
    ) -> None:
        """Set MLP weights in TransformerLens row form (`W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`)."""
        self._check_layer(layer)
        if not self.cfg.mlp:
            raise IclgdError("this model has no MLP (LinearAttentionConfig.mlp=False)")
        m = self.block(layer).mlp
        for name, value in (("W_in", W_in), ("b_in", b_in), ("W_out", W_out), ("b_out", b_out)):
            if value is not None:
                self._assign(getattr(m, name), value, name)

    def zero_weights(self) -> None:
        """Set every weight to zero (LayerNorm gains to one); a starting point for constructions."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.fill_(
                    1.0 if name.split(".")[-2].startswith("ln") and name.endswith(".w") else 0.0
                )

    def merged_qk(self, layer: int, head: int = 0) -> Float[Tensor, "d_model d_model"]:
        """Column-form `W_K^T W_Q` of one head: `score(j, i) = e_i^T (W_K^T W_Q) e_j` (times attn_scale)."""
        self._check_layer(layer)
        a = self.block(layer).attn
        return a.W_K[head] @ a.W_Q[head].T

    def merged_ov(self, layer: int, head: int = 0) -> Float[Tensor, "d_model d_model"]:
        """Column-form `P W_V` of one head: the head writes `P W_V e_i` per unit of pattern."""
        self._check_layer(layer)
        a = self.block(layer).attn
        return (a.W_V[head] @ a.W_O[head]).T
