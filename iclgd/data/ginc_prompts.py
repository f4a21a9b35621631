"""GINC in-context prompts (Xie et al. 2022), sampled in parallel.

Reading of Xie et al.'s prompt generator ("ID_sample"/"OOD_sample" with random sampling), which
this module follows:

- a prompt uses one concept, drawn uniformly from the in-distribution concepts (`"in"`) or the
  held-out ones (`"out"`);
- one *start property* `s`, uniform on `1 .. n_properties-1` (never the delimiter column), is
  shared by every example of the prompt;
- each of the `n + 1` examples starts independently at state (e, s) with entity `e` uniform, then
  runs the concept's HMM for `k - 1` transitions, giving `k` tokens; a delimiter follows each
  example (it is appended, not emitted by the HMM);
- the prompt is the `n` full examples with their delimiters followed by the first `k - 1`
  tokens of the test example: length `n * (k + 1) + k - 1`, no BOS;
- the label is the most likely next token under the *true* concept given only the test
  example's `k - 1` tokens and the start distribution (uniform entity, property `s`), i.e. the
  Bayes-optimal next token when the concept is known (ties: lowest token id, as numpy argmax);
  the test example's sampled last token is discarded. See `iclgd.data.ginc_bayes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Int

from iclgd.data.ginc_bayes import true_concept_next_token_probs
from iclgd.data.ginc_hmm import DELIMITER_ID, GincWorld, _sample_rows
from iclgd.errors import IclgdError


@dataclass(frozen=True, eq=False)
class GincPrompts:
    """A batch of prompts with equal `n_examples` and `k`.

    tokens `[batch, n*(k+1)+k-1]`, labels `[batch]` (Bayes-optimal next token under the true
    concept), concept `[batch]` (world concept index), start_property `[batch]`.
    """

    tokens: Int[np.ndarray, "batch pos"]
    labels: Int[np.ndarray, " batch"]
    concept: Int[np.ndarray, " batch"]
    start_property: Int[np.ndarray, " batch"]
    n_examples: int
    k: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def examples(self) -> Int[np.ndarray, "batch n k"]:
        """The n full in-context examples, without delimiters."""
        n, k = self.n_examples, self.k
        body = self.tokens[:, : n * (k + 1)].reshape(len(self), n, k + 1)
        return body[:, :, :k]

    @property
    def test_input(self) -> Int[np.ndarray, "batch k_minus_1"]:
        """The test example's first `k - 1` tokens (the prompt's tail)."""
        return self.tokens[:, self.n_examples * (self.k + 1):]


def prompt_length(n_examples: int, k: int) -> int:
    """Number of tokens in a prompt with `n_examples` examples of length `k`."""
    return n_examples * (k + 1) + k - 1


def sample_prompt_states(
    world: GincWorld, n_examples: int, k: int, n_prompts: int, concepts: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hidden chains of the prompts: `(entity, property)` each `[P, n+1, k]`, concept, start."""
    cfg = world.config
    pool = world.concept_ids(concepts)
    concept = pool[rng.integers(0, len(pool), size=n_prompts)]
    start = rng.integers(1, cfg.n_properties, size=n_prompts)
    rows = n_prompts * (n_examples + 1)
    row_concept = np.repeat(concept, n_examples + 1)
    ent = np.empty((rows, k), dtype=np.int64)
    prop = np.empty((rows, k), dtype=np.int64)
    ent[:, 0] = rng.integers(0, cfg.n_entities, size=rows)
    prop[:, 0] = np.repeat(start, n_examples + 1)
    cum_e = np.cumsum(world.entity_transition, axis=1)
    cum_p = np.cumsum(world.property_transitions, axis=2)
    for t in range(1, k):
        u = rng.random((2, rows))
        ent[:, t] = _sample_rows(cum_e[ent[:, t - 1]], u[0])
        prop[:, t] = _sample_rows(cum_p[row_concept, prop[:, t - 1]], u[1])
    shape = (n_prompts, n_examples + 1, k)
    return ent.reshape(shape), prop.reshape(shape), concept, start


def sample_prompts(
    world: GincWorld, n_examples: int, k: int, n_prompts: int, *, concepts: str = "in",
    seed: int = 0,
) -> GincPrompts:
    """Sample `n_prompts` GINC prompts with exact Bayes-optimal labels.

    Deterministic in (world config, n_examples, k, n_prompts, concepts, seed). Labels come from
    `ginc_bayes.true_concept_next_token_probs` (forward algorithm, float64).
    """
    if n_examples < 0 or k < 2 or n_prompts < 1:
        raise IclgdError(
            f"need n_examples >= 0, k >= 2, n_prompts >= 1; got {n_examples}, {k}, {n_prompts}"
        )
    tag = 0 if concepts == "in" else 1
    rng = np.random.default_rng([world.config.seed, seed, n_examples, k, tag, 11])
    ent, prop, concept, start = sample_prompt_states(world, n_examples, k, n_prompts, concepts, rng)
    toks = world.memory[ent, prop]  # [P, n+1, k]
    delim = np.full((n_prompts, n_examples + 1, 1), DELIMITER_ID, dtype=np.int64)
    full = np.concatenate([toks, delim], axis=2).reshape(n_prompts, -1)
    tokens = full[:, : prompt_length(n_examples, k)].copy()
    probe = GincPrompts(tokens, np.zeros(n_prompts, np.int64), concept, start, n_examples, k)
    probs = true_concept_next_token_probs(world, probe)
    return GincPrompts(tokens, probs.argmax(axis=1), concept, start, n_examples, k)
