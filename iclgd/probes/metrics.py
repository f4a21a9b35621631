"""ICL-vs-finetuning comparison metrics (Dai et al. 2023; Deutch et al. 2024; Shen et al. 2024),
pure functions on tensors.

Every function is batched over the leading axes and reduces only the axis its name says (the
last one, unless stated); nothing is averaged over examples, heads or layers here — the caller
does that, so the reduction order (Dai: over examples, then over layers) stays explicit.
Computation is in float64; results are float64 tensors.

Settings: ZS = zero-shot (query alone), ICL = demonstrations + query, FT = the model finetuned on
the demonstrations, run zero-shot on the query.

Zero-vector convention (`cosine`): the cosine of anything with a zero vector is **0**, not NaN —
"no update" shares no direction with any update, and averages over examples stay finite.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from iclgd.errors import IclgdError

_TINY = 1e-300


def _f64(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    return x.detach().to(torch.float64)


def _same_shape(*xs: Tensor) -> None:
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise IclgdError(f"inputs must have the same shape, got {sorted(shapes)}")


def cosine(a: Float[Tensor, "... d"], b: Float[Tensor, "... d"]) -> Float[Tensor, "..."]:
    """Cosine similarity `a·b / (||a|| ||b||)` over the last axis.

    Returns 0 where either vector is exactly zero (documented choice, see module docstring).
    """
    a, b = _f64(a), _f64(b)
    _same_shape(a, b)
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    dot = (a * b).sum(-1)
    ok = (na > 0) & (nb > 0)
    return torch.where(ok, dot / (na * nb).clamp_min(_TINY), torch.zeros_like(dot))


def _unit(x: Tensor) -> Tensor:
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(n > 0, x / n.clamp_min(_TINY), torch.zeros_like(x))


def simaou(
    icl: Float[Tensor, "... d_model"],
    zs: Float[Tensor, "... d_model"],
    ft: Float[Tensor, "... d_model"],
    *,
    normalize: bool = True,
) -> Float[Tensor, "..."]:
    """SimAOU: similarity of the ICL and FT updates of an attention output (Dai et al. 2023).

    `h` is the attention block's output at the last token (after the output projection, before
    the residual add: `blocks.{l}.hook_attn_out[:, -1]`), one per setting.
    - `normalize=True` (unit-normalised): `cos(ĥ_ICL − ĥ_ZS, ĥ_FT − ĥ_ZS)` with `ĥ = h / ||h||`
      (each input scaled to unit length **before** subtracting). Dai's code computes this, and so
      does every committed call of Deutch et al.'s (2024) code.
    - `normalize=False` (raw): `cos(h_ICL − h_ZS, h_FT − h_ZS)` on the unnormalised vectors, the
      form Deutch et al. argue for (normalising first lets a shared ZS component enter both
      differences).
    Shapes `[..., d_model]` → `[...]`; average over examples then layers yourself.

    Example:
        >>> zs, icl, ft = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0])
        >>> round(float(simaou(icl, zs, ft, normalize=False)), 4)  # cos((0, 1), (1, 1))
        0.7071
    """
    icl, zs, ft = _f64(icl), _f64(zs), _f64(ft)
    _same_shape(icl, zs, ft)
    if normalize:
        icl, zs, ft = _unit(icl), _unit(zs), _unit(ft)
    return cosine(icl - zs, ft - zs)


def random_baseline_simaou(
    icl: Float[Tensor, "... d_model"],
    zs: Float[Tensor, "... d_model"],
    generator: torch.Generator | None = None,
    *,
    normalize: bool = True,
) -> Float[Tensor, "..."]:
    """Dai et al.'s random control for SimAOU: the FT update is replaced by a random vector.

    Exactly: draw `u ~ U[0,1)^d_model` independently for every leading index (float64,
    `torch.rand(icl.shape, generator=generator)`), and return `cos(ĥ_ICL − ĥ_ZS, u)` —
    `u` takes the place of the whole update `ĥ_FT − ĥ_ZS` (it is not added to `h_ZS` and not
    normalised). `normalize` has the same meaning for the ICL side as in `simaou`.
    Dai report ≈ 0.002 / −0.001 on their 1.3B / 2.7B models.
    """
    icl, zs = _f64(icl), _f64(zs)
    _same_shape(icl, zs)
    if normalize:
        icl, zs = _unit(icl), _unit(zs)
    u = torch.rand(icl.shape, generator=generator, dtype=torch.float64)
    return cosine(icl - zs, u)


def _finite_scores(*xs: Tensor) -> None:
    for x in xs:
        if not torch.isfinite(x).all():
            raise IclgdError(
                "attention scores contain inf/NaN (masked positions?): pass only the scores "
                "over the query tokens the last token can attend to"
            )


def simam(
    a: Float[Tensor, "... n_tokens"], b: Float[Tensor, "... n_tokens"]
) -> Float[Tensor, "..."]:
    """SimAM (Dai et al. 2023): cosine over the last axis of two **pre-softmax** attention score
    vectors (`blocks.{l}.attn.hook_attn_scores` of the last token, restricted to the query's own
    tokens so that ICL, ZS and FT score the same keys). ICL vs FT is "after"; ZS vs ICL is the
    "before" baseline. Average over heads, then examples, yourself.

    Example:
        >>> round(float(simam(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))), 6)
        1.0
    """
    a, b = _f64(a), _f64(b)
    _finite_scores(a, b)
    return cosine(a, b)


def simam_delta(
    a_icl: Float[Tensor, "... n_tokens"],
    a_zs: Float[Tensor, "... n_tokens"],
    a_ft: Float[Tensor, "... n_tokens"],
) -> Float[Tensor, "..."]:
    """SimAM_Δ (Deutch et al. 2024): `cos(a_ICL − a_ZS, a_FT − a_ZS)` on pre-softmax scores.

    Example:
        >>> a_zs = torch.tensor([1.0, 1.0])
        >>> round(float(simam_delta(torch.tensor([1.0, 2.0]), a_zs, torch.tensor([2.0, 2.0]))), 4)
        0.7071
    """
    a_icl, a_zs, a_ft = _f64(a_icl), _f64(a_zs), _f64(a_ft)
    _same_shape(a_icl, a_zs, a_ft)
    _finite_scores(a_icl, a_zs, a_ft)
    return cosine(a_icl - a_zs, a_ft - a_zs)


def rec2ftp(
    zs_correct: Bool[Tensor, "... n"],
    ft_correct: Bool[Tensor, "... n"],
    icl_correct: Bool[Tensor, "... n"],
) -> Float[Tensor, "..."]:
    """Rec2FTP (Dai et al. 2023) over the last axis (examples):
    `#(ZS wrong, FT right, ICL right) / #(ZS wrong, FT right)`; NaN when the denominator is 0.

    Example:
        >>> zs, ft, icl = torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), torch.tensor([1, 0, 1])
        >>> float(rec2ftp(zs, ft, icl))  # 2 recovered by FT, ICL also right on 1 of them
        0.5
    """
    zs, ft, icl = (torch.as_tensor(x).bool() for x in (zs_correct, ft_correct, icl_correct))
    _same_shape(zs, ft, icl)
    base = (~zs) & ft
    den = base.sum(-1).to(torch.float64)
    num = (base & icl).sum(-1).to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1.0), torch.full_like(den, float("nan")))


KENDALL_VARIANTS = ("b", "a")
_KENDALL_CHUNK = 1 << 22  # pair entries held at once (rows × N²), bounds the memory


def kendall_tau(
    x: Float[Tensor, "... n"], y: Float[Tensor, "... n"], *, variant: str = "b"
) -> Float[Tensor, "..."]:
    """Kendall's rank correlation over the last axis (Kendall 1938; τ-b: Kendall 1945), as used by
    Dai et al. (2023) between ICL's and FT's attention to the training tokens.

    Over pairs i < j, with `S = P_c − P_d = Σ sign(x_i − x_j) sign(y_i − y_j)`, `n_0 = N(N−1)/2`
    and `n_1`, `n_2` the pairs tied in x, in y:
    - `variant="b"` (default; `scipy.stats.kendalltau`'s default, what Dai's code computes):
      `τ_b = S / sqrt((n_0 − n_1)(n_0 − n_2))`; NaN when x or y is constant (as scipy);
    - `variant="a"`: `τ_a = S / n_0` — ties pull it toward 0, so it is smaller than τ-b
      whenever there are ties (x = [0, 0, 1, 2], y = [0, 1, 1, 2]: τ-a 2/3, τ-b 0.8).
    NaN for N < 2 and for rows holding NaN (scipy's default `nan_policy="propagate"`).
    Exact comparisons: round first if values equal up to float noise should tie. Memory: rows are
    processed in chunks of about 4M pair entries.

    Example:
        >>> round(float(kendall_tau(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]))), 4)
        0.3333
    """
    if variant not in KENDALL_VARIANTS:
        raise IclgdError(f"unknown Kendall variant {variant!r}: use 'b' (τ-b) or 'a' (τ-a)")
    x, y = _f64(x), _f64(y)
    _same_shape(x, y)
    lead, n = x.shape[:-1], x.shape[-1]
    if n < 2:
        return torch.full(lead, float("nan"), dtype=torch.float64)
    fx, fy = x.reshape(-1, n), y.reshape(-1, n)
    step = max(1, _KENDALL_CHUNK // (n * n))
    out = torch.cat([_kendall_rows(fx[i : i + step], fy[i : i + step], variant)
                     for i in range(0, fx.shape[0], step)]) if fx.shape[0] else fx.new_zeros(0)
    return out.reshape(lead)


def _kendall_rows(x: Tensor, y: Tensor, variant: str) -> Tensor:
    """τ of each row of `x, y [rows, n]` (see `kendall_tau`)."""
    n = x.shape[-1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    sx = torch.sign(x[:, :, None] - x[:, None, :])[:, upper]  # [rows, n_0]
    sy = torch.sign(y[:, :, None] - y[:, None, :])[:, upper]
    s = (sx * sy).sum(-1)  # P_c − P_d
    nan = torch.full_like(s, float("nan"))
    has_nan = x.isnan().any(-1) | y.isnan().any(-1)  # torch.sign(nan) is 0, not nan
    if variant == "a":
        return torch.where(has_nan, nan, s / (n * (n - 1) / 2))
    untied = (sx * sx).sum(-1) * (sy * sy).sum(-1)  # (n_0 − n_1)(n_0 − n_2)
    return torch.where((untied > 0) & ~has_nan, s / untied.clamp_min(1.0).sqrt(), nan)


def _topk(p: Tensor, q: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of Top_K(p), and the mask of those also in Top_K(q)."""
    _same_shape(p, q)
    if k < 1 or k > p.shape[-1]:
        raise IclgdError(f"k must be between 1 and the vocabulary size {p.shape[-1]}, got {k}")
    ip = torch.topk(p, k, dim=-1).indices
    iq = torch.topk(q, k, dim=-1).indices
    in_q = (ip[..., :, None] == iq[..., None, :]).any(-1)
    return ip, iq, in_q


def token_overlap(
    p: Float[Tensor, "... vocab"], q: Float[Tensor, "... vocab"], k: int = 10
) -> Float[Tensor, "..."]:
    """Token overlap (Shen et al. 2024; the paper's text was unavailable, this is a fixed reading):
    `TO = |Top_K(p) ∩ Top_K(q)| / K` on next-token probability vectors. Ties at the K-th place
    are broken by `torch.topk` (an arbitrary but deterministic choice).

    Example:
        >>> p, q = torch.tensor([0.5, 0.3, 0.2, 0.0]), torch.tensor([0.1, 0.6, 0.0, 0.3])
        >>> float(token_overlap(p, q, k=2))  # top-2 {0, 1} vs {1, 3}
        0.5
    """
    p, q = _f64(p), _f64(q)
    _, _, in_q = _topk(p, q, k)
    return in_q.sum(-1).to(torch.float64) / k


def overlap_cosine(
    p: Float[Tensor, "... vocab"], q: Float[Tensor, "... vocab"], k: int = 10
) -> Float[Tensor, "..."]:
    """Overlap cosine similarity (Shen et al. 2024; a fixed reading, as for `token_overlap`): the cosine
    between `p` and `q` restricted to the tokens in `Top_K(p) ∩ Top_K(q)`; 0 for an empty
    overlap.

    Example:
        >>> p, q = torch.tensor([0.5, 0.3, 0.2, 0.0]), torch.tensor([0.1, 0.6, 0.0, 0.3])
        >>> float(overlap_cosine(p, q, k=2))  # only token 1 is shared: cosine of (0.3) and (0.6)
        1.0
    """
    p, q = _f64(p), _f64(q)
    ip, _, in_q = _topk(p, q, k)
    pv = torch.gather(p, -1, ip) * in_q
    qv = torch.gather(q, -1, ip) * in_q
    return cosine(pv, qv)


def order_sensitivity(dists: Float[Tensor, "n_orders ... vocab"]) -> Float[Tensor, "..."]:
    """Order sensitivity (Shen et al. 2024; a reconstruction from secondary sources): for next-token
    distributions under `n_orders` orderings of the same demonstrations (axis 0), the population
    standard deviation (ddof = 0) over orderings of each vocabulary entry, summed over the
    vocabulary (last axis). `[n_orders, ..., vocab]` → `[...]`; average over queries yourself.

    Example:
        >>> dists = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two orderings, opposite answers
        >>> float(order_sensitivity(dists))  # std 0.5 per entry, summed over the vocabulary
        1.0
    """
    d = _f64(dists)
    if d.ndim < 2 or d.shape[0] < 2:
        raise IclgdError(
            f"order_sensitivity needs [n_orders >= 2, ..., vocab], got shape {tuple(d.shape)}"
        )
    return d.std(dim=0, correction=0).sum(-1)
