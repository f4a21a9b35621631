"""GINC generator: determinism, structure, and exact Bayes quantities vs brute-force enumeration."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from iclgd.data.ginc import (
    DELIMITER_ID,
    GincConfig,
    GincPrompts,
    build_world,
    hmm_forward,
    ideal_accuracy,
    ideal_next_token_probs,
    pretrained_lm_accuracy,
    pretrained_lm_next_token_probs,
    pretraining_stream,
    prompt_length,
    sample_documents,
    sample_prompts,
    smoothed_world,
    true_concept_next_token_probs,
)
from iclgd.errors import IclgdError

TINY = GincConfig(n_entities=2, n_properties=3, vocab_size=4, n_concepts_in=2,
                  n_concepts_out=1, seed=5)


def test_same_seed_same_world_and_prompts():
    a, b = build_world(GincConfig()), build_world(GincConfig())
    for name in ("memory", "entity_transition", "property_transitions", "start_probs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    pa, pb = sample_prompts(a, 4, 3, 50, seed=3), sample_prompts(b, 4, 3, 50, seed=3)
    np.testing.assert_array_equal(pa.tokens, pb.tokens)
    np.testing.assert_array_equal(pa.labels, pb.labels)
    other = build_world(GincConfig(seed=2))
    assert not np.array_equal(a.property_transitions, other.property_transitions)
    assert not np.array_equal(pa.tokens, sample_prompts(a, 4, 3, 50, seed=4).tokens)


def test_config_json_round_trip_and_validation():
    cfg = GincConfig(vocab_size=100, seed=9)
    assert GincConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(IclgdError):
        GincConfig(n_properties=1)
    with pytest.raises(IclgdError):
        GincConfig.from_dict({"vocab": 50})


def test_world_structure():
    w = build_world(GincConfig())
    assert w.memory.shape == (10, 10) and w.n_concepts == 10 and w.n_states == 100
    assert (w.memory[:, 0] == DELIMITER_ID).all()
    assert ((w.memory[:, 1:] >= 1) & (w.memory[:, 1:] < 50)).all()
    np.testing.assert_allclose(w.entity_transition.sum(1), 1.0, atol=1e-12)
    assert (np.diag(w.entity_transition) >= 0.9 - 1e-12).all()
    # permutation mixtures are doubly stochastic
    np.testing.assert_allclose(w.property_transitions.sum(2), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.property_transitions.sum(1), 1.0, atol=1e-12)
    full = w.transition(3)
    np.testing.assert_allclose(full[2 * 10 + 4, 7 * 10 + 1],
                               w.entity_transition[2, 7] * w.property_transitions[3, 4, 1])
    assert list(w.concept_ids("in")) == [0, 1, 2, 3, 4]
    assert list(w.concept_ids("out")) == [5, 6, 7, 8, 9]


def test_prompt_layout():
    w = build_world(GincConfig())
    p = sample_prompts(w, 5, 3, 40, seed=1)
    assert p.tokens.shape == (40, prompt_length(5, 3)) == (40, 22)
    assert (p.tokens[:, 3::4] == DELIMITER_ID).all()
    # start properties are never the delimiter column (later states of an example may be)
    assert (p.examples[:, :, 0] != DELIMITER_ID).all() and (p.test_input[:, 0] != DELIMITER_ID).all()
    assert set(p.concept.tolist()) <= {0, 1, 2, 3, 4}
    # each example starts in the prompt's start property
    first = p.examples[:, :, 0]
    allowed = w.memory[:, p.start_property].T  # [B, E]
    assert all(set(first[i]) <= set(allowed[i]) for i in range(len(p)))
    out = sample_prompts(w, 2, 3, 30, concepts="out")
    assert set(out.concept.tolist()) <= {5, 6, 7, 8, 9}


def test_documents_are_possible_under_their_concept():
    w = build_world(GincConfig())
    docs, concept = sample_documents(w, 6, 200, np.random.default_rng(0))
    import torch

    init = torch.as_tensor(w.start_probs[w.concept_ids("in")]).reshape(5, 1, 10, 10)
    ll, _ = hmm_forward(w, docs, list(w.concept_ids("in")), init)
    own = ll[torch.arange(6), torch.as_tensor(concept), 0]
    assert torch.isfinite(own).all()
    stream = pretraining_stream(w, n_docs=3, doc_length=50, seed=0)
    assert stream.shape == (153,) and (stream[50::51] == DELIMITER_ID).all()


# ---------------------------------------------------------------- brute force on a tiny HMM

def _seq_prob(world, concept, tokens, init):
    """p(tokens, last state) by enumerating every hidden path; init [S] over states."""
    trans, out = world.transition(concept), world.state_tokens
    n_s = world.n_states
    last = np.zeros(n_s)
    for path in itertools.product(range(n_s), repeat=len(tokens)):
        if any(out[h] != t for h, t in zip(path, tokens, strict=True)):
            continue
        pr = init[path[0]]
        for a, b in itertools.pairwise(path):
            pr *= trans[a, b]
        last[path[-1]] += pr
    return last


def _start(world, s):
    init = np.zeros(world.n_states)
    init[np.arange(world.config.n_entities) * world.config.n_properties + s] = 1 / world.config.n_entities
    return init


def _next(world, concept, last):
    return (last / last.sum()) @ world.transition(concept) @ world.emission()


def _tiny_prompts(n, k, count=6, concepts="in"):
    w = build_world(TINY)
    return w, sample_prompts(w, n, k, count, concepts=concepts, seed=2)


@pytest.mark.parametrize("k", [2, 3])
def test_labels_match_brute_force(k):
    w, p = _tiny_prompts(1, k)
    got = true_concept_next_token_probs(w, p)
    for i in range(len(p)):
        last = _seq_prob(w, p.concept[i], p.test_input[i], _start(w, p.start_property[i]))
        np.testing.assert_allclose(got[i], _next(w, p.concept[i], last), atol=1e-12)
    assert (p.labels == got.argmax(1)).all()


@pytest.mark.parametrize("shared", [False, True])
def test_ideal_learner_matches_brute_force(shared):
    w, p = _tiny_prompts(2, 2, count=5)
    got = ideal_next_token_probs(w, p, shared_start=shared)
    starts = range(1, w.config.n_properties)
    for i in range(len(p)):
        num, den = np.zeros(w.config.vocab_size), 0.0
        for c in w.concept_ids("in"):
            for s in starts:
                weight = _seq_prob(w, c, p.test_input[i], _start(w, s))
                pred = _next(w, c, weight) if weight.sum() > 0 else 0.0
                weight = weight.sum()
                for ex in p.examples[i]:
                    if shared:
                        weight *= _seq_prob(w, c, ex, _start(w, s)).sum()
                    else:
                        weight *= np.mean([_seq_prob(w, c, ex, _start(w, s2)).sum() for s2 in starts])
                num, den = num + weight * pred, den + weight
        np.testing.assert_allclose(got[i], num / den, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_pretrained_lm_predictor_matches_brute_force(eps):
    w, p = _tiny_prompts(1, 2, count=4)
    got = pretrained_lm_next_token_probs(w, p, smoothing=eps)
    ws = smoothed_world(w, eps)
    if eps > 0:
        full = ws.transition(0)
        np.testing.assert_allclose(full, (1 - eps) ** 2 * w.transition(0)
                                   + (1 - eps) * eps * np.kron(w.entity_transition, np.full((3, 3), 1 / 3))
                                   + eps * (1 - eps) * np.kron(np.full((2, 2), 1 / 2), w.property_transitions[0])
                                   + eps**2 / 6, atol=1e-12)
        assert (full > 0).all()
    init = np.full(w.n_states, 1 / w.n_states)
    checked = 0
    for i in range(len(p)):
        num, den = np.zeros(w.config.vocab_size), 0.0
        for c in w.concept_ids("in"):
            last = _seq_prob(ws, c, p.tokens[i], init)
            if last.sum() > 0:
                num, den = num + last.sum() * _next(ws, c, last), den + last.sum()
        if den > 0:
            np.testing.assert_allclose(got[i], num / den, atol=1e-12)
            checked += 1
    assert checked == len(p) if eps > 0 else checked > 0


def test_smoothed_pretraining_predictor_rises_with_examples():
    # unsmoothed, most long prompts are impossible under every concept (delimiter jumps)
    w = build_world(GincConfig())
    acc0, _ = pretrained_lm_accuracy(w, sample_prompts(w, 0, 3, 300, seed=5))
    acc16, se16 = pretrained_lm_accuracy(w, sample_prompts(w, 16, 3, 300, seed=5))
    raw16, _ = pretrained_lm_accuracy(w, sample_prompts(w, 16, 3, 300, seed=5), smoothing=0.0)
    assert 0.45 < acc0 < 0.65 and acc16 > acc0 + 0.1 and acc16 > raw16 + 0.2
    with pytest.raises(IclgdError):
        smoothed_world(w, 1.5)


def test_ideal_ceiling_rises_with_examples_in_distribution_only():
    w = build_world(GincConfig())
    acc0, se0 = ideal_accuracy(w, sample_prompts(w, 0, 3, 300, seed=5))
    acc8, _ = ideal_accuracy(w, sample_prompts(w, 8, 3, 300, seed=5))
    out8, _ = ideal_accuracy(w, sample_prompts(w, 8, 3, 300, concepts="out", seed=5))
    assert 0.45 < acc0 < 0.68 and 0.02 < se0 < 0.035  # the exact Bayes reference: about 54 % at n = 0
    assert acc8 > acc0 + 0.2
    assert out8 < 0.35  # the 5-concept learner cannot infer a held-out concept


def test_prompts_reject_bad_arguments():
    w = build_world(TINY)
    with pytest.raises(IclgdError):
        sample_prompts(w, 2, 1, 5)
    with pytest.raises(IclgdError):
        sample_prompts(w, 2, 3, 5, concepts="middle")
    assert isinstance(sample_prompts(w, 0, 2, 3), GincPrompts)
