"""The GINC world: a mixture of factorial HMMs over (entity, property) hidden states.

Follows Xie et al. 2022, "An Explanation of In-context Learning as Implicit Bayesian Inference"
(the GINC data set) and its released `generate_data.py`:

- hidden state = (entity, property); state index `s = entity * n_properties + property`;
- emission is deterministic: state (e, p) emits `memory[e, p]`; column 0 of the shared memory
  matrix is the delimiter token (id 0), every other entry is a random non-delimiter token
  drawn uniformly from `1 .. vocab_size - 1`;
- the entity chain and the property chain evolve independently, so the full transition matrix
  is `kron(entity_transition, property_transition)`;
- entity transitions are shared by all concepts: `(1 - c) T + c I` with `c = 0.9` and `T` a
  random permutation mixture;
- a *concept* is a property transition matrix: a convex combination of `n_properties` random
  permutation matrices with weights `softmax((u - 0.5) / 0.1)`, `u ~ U[0, 1]`;
- each concept also has a start distribution `softmax((u - 0.5) / 10)` over the states
  (nearly uniform; used for pretraining documents only);
- `n_concepts_in` concepts form the pretraining mixture, `n_concepts_out` more are held out.

Everything is drawn from one `numpy.random.Generator(PCG64(seed))`, so a `GincConfig` (JSON) is
enough to rebuild the identical world. Token ids equal GINC vocabulary ids: 0 is the delimiter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from iclgd.errors import IclgdError
from iclgd.results import read_json

GINC_JSON = "ginc.json"
DELIMITER_ID = 0


@dataclass(frozen=True)
class GincConfig:
    """Parameters of a GINC world (defaults: Xie et al.'s vocab-50 setting)."""

    n_entities: int = 10
    n_properties: int = 10
    vocab_size: int = 50
    n_concepts_in: int = 5
    n_concepts_out: int = 5
    transition_temp: float = 0.1
    start_temp: float = 10.0
    entity_identity_coeff: float = 0.9
    seed: int = 1111

    def __post_init__(self) -> None:
        if self.n_entities < 1 or self.n_properties < 2:
            raise IclgdError(
                f"GINC needs n_entities >= 1 and n_properties >= 2, got {self.n_entities}, "
                f"{self.n_properties}; pass larger sizes"
            )
        if self.vocab_size < 2:
            raise IclgdError(f"GINC vocab_size must be >= 2 (delimiter + 1 token), got {self.vocab_size}")
        if self.n_concepts_in < 1 or self.n_concepts_out < 0:
            raise IclgdError(
                f"GINC needs n_concepts_in >= 1 and n_concepts_out >= 0, got "
                f"{self.n_concepts_in}, {self.n_concepts_out}"
            )
        if self.transition_temp <= 0 or self.start_temp <= 0:
            raise IclgdError("GINC temperatures must be positive")
        if not 0.0 <= self.entity_identity_coeff <= 1.0:
            raise IclgdError(
                f"entity_identity_coeff must lie in [0, 1], got {self.entity_identity_coeff}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GincConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise IclgdError(f"unknown GINC config keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True, eq=False)
class GincWorld:
    """The sampled HMMs. Concepts `0 .. n_concepts_in-1` are in-distribution, the rest held out.

    Shapes (E entities, P properties, C concepts, S = E*P states):
    memory [E, P] int64; entity_transition [E, E]; property_transitions [C, P, P];
    start_probs [C, S]. Transition rows sum to 1 (row = from, column = to).
    """

    config: GincConfig
    memory: np.ndarray
    entity_transition: np.ndarray
    property_transitions: np.ndarray
    start_probs: np.ndarray

    @property
    def n_concepts(self) -> int:
        return int(self.property_transitions.shape[0])

    @property
    def n_states(self) -> int:
        return self.config.n_entities * self.config.n_properties

    @property
    def state_tokens(self) -> np.ndarray:
        """Token emitted by each state, `[S]` (state = entity * P + property)."""
        return self.memory.reshape(-1)

    def concept_ids(self, which: str) -> np.ndarray:
        """Indices of the in-distribution (`"in"`) or held-out (`"out"`) concepts."""
        n_in = self.config.n_concepts_in
        if which == "in":
            return np.arange(n_in)
        if which == "out":
            if self.config.n_concepts_out == 0:
                raise IclgdError("this GINC world has no held-out concepts (n_concepts_out=0)")
            return np.arange(n_in, self.n_concepts)
        raise IclgdError(f"concepts must be 'in' or 'out', got {which!r}")

    def transition(self, concept: int) -> np.ndarray:
        """Full `[S, S]` transition matrix of one concept: kron(entity, property)."""
        return np.kron(self.entity_transition, self.property_transitions[concept])

    def emission(self) -> np.ndarray:
        """One-hot emission matrix `[S, vocab_size]`."""
        out = np.zeros((self.n_states, self.config.vocab_size))
        out[np.arange(self.n_states), self.state_tokens] = 1.0
        return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def permutation_mixture(rng: np.random.Generator, size: int, temp: float) -> np.ndarray:
    """`size` random permutation matrices mixed with weights softmax((u - 0.5) / temp)."""
    weights = _softmax((rng.random(size) - 0.5) / temp)
    mat = np.zeros((size, size))
    for w in weights:
        perm = rng.permutation(size)
        mat[np.arange(size), perm] += w
    return mat


def build_world(config: GincConfig | None = None) -> GincWorld:
    """Sample the GINC world determined by `config` (default `GincConfig()`)."""
    cfg = config or GincConfig()
    rng = np.random.default_rng(cfg.seed)
    memory = rng.integers(1, cfg.vocab_size, size=(cfg.n_entities, cfg.n_properties))
    memory[:, 0] = DELIMITER_ID
    if cfg.vocab_size == 2:
        memory[:, 1:] = 1
    ent = permutation_mixture(rng, cfg.n_entities, cfg.transition_temp)
    ent = (1.0 - cfg.entity_identity_coeff) * ent + cfg.entity_identity_coeff * np.eye(cfg.n_entities)
    n_c = cfg.n_concepts_in + cfg.n_concepts_out
    props = np.stack(
        [permutation_mixture(rng, cfg.n_properties, cfg.transition_temp) for _ in range(n_c)]
    )
    n_s = cfg.n_entities * cfg.n_properties
    starts = np.stack([_softmax((rng.random(n_s) - 0.5) / cfg.start_temp) for _ in range(n_c)])
    return GincWorld(cfg, memory.astype(np.int64), ent, props, starts)


def _sample_rows(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, one draw per row of cumulative probabilities `cum` [B, K]."""
    idx = (cum < u[:, None]).sum(axis=1)
    return np.minimum(idx, cum.shape[1] - 1)


def sample_documents(
    world: GincWorld, n_docs: int, length: int, rng: np.random.Generator,
    concepts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pretraining documents: `(tokens [n_docs, length] int64, concept [n_docs])`.

    Each document picks one concept uniformly from `concepts` (default: the in-distribution
    ones), starts from that concept's start distribution and runs its HMM for `length` steps
    (Xie et al.: 1000 documents of 10,240 tokens). All documents are sampled in parallel.
    """
    cfg = world.config
    pool = world.concept_ids("in") if concepts is None else np.asarray(concepts)
    concept = pool[rng.integers(0, len(pool), size=n_docs)]
    state = _sample_rows(np.cumsum(world.start_probs[concept], axis=1), rng.random(n_docs))
    ent, prop = state // cfg.n_properties, state % cfg.n_properties
    cum_e = np.cumsum(world.entity_transition, axis=1)
    cum_p = np.cumsum(world.property_transitions, axis=2)
    tokens = np.empty((n_docs, length), dtype=np.int64)
    for t in range(length):
        tokens[:, t] = world.memory[ent, prop]
        u = rng.random((2, n_docs))
        ent = _sample_rows(cum_e[ent], u[0])
        prop = _sample_rows(cum_p[concept, prop], u[1])
    return tokens, concept


def pretraining_stream(
    world: GincWorld, n_docs: int = 1000, doc_length: int = 10240, seed: int = 0
) -> np.ndarray:
    """The pretraining corpus as one token stream `[n_docs * (doc_length + 1)]` (int64).

    Documents are concatenated, each followed by one delimiter token (Xie et al. join documents
    with " / "); training windows are cut from this stream at random offsets.
    """
    rng = np.random.default_rng([world.config.seed, seed, 7])
    docs, _ = sample_documents(world, n_docs, doc_length, rng)
    sep = np.full((n_docs, 1), DELIMITER_ID, dtype=np.int64)
    return np.concatenate([docs, sep], axis=1).reshape(-1)


def save_ginc_json(folder: str | Path, config: GincConfig, **extra: Any) -> Path:
    """Write `folder/ginc.json` with the generator configuration (+ extra fields)."""
    from iclgd.results import write_json

    return write_json(Path(folder) / GINC_JSON, {"ginc": config.to_dict(), **extra})


def load_ginc_config(folder: str | Path) -> GincConfig:
    """The `GincConfig` stored in `folder/ginc.json`."""
    path = Path(folder) / GINC_JSON
    if not path.is_file():
        raise IclgdError(f"{path} not found; pass a checkpoint folder written by `iclgd train ginc`")
    data = read_json(path)
    if "ginc" not in data:
        raise IclgdError(f"{path} has no 'ginc' entry; it was not written by iclgd")
    return GincConfig.from_dict(data["ginc"])


def load_ginc_world(folder: str | Path) -> GincWorld:
    """Rebuild the exact GINC world a checkpoint folder was trained on (from its ginc.json)."""
    return build_world(load_ginc_config(folder))
