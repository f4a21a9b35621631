"""Does a GINC checkpoint infer the concept from context? Accuracy with a concept document first.

    python bench/ginc_concept_context.py CHECKPOINT [--prompts 1500] [--length 128]

For in-distribution k = 3 test inputs (n = 0 prompts, prompt seed 5), the checkpoint's accuracy
(label: Bayes-optimal next token under the prompt's concept) with no context, after a delimiter
and a pretraining-style document of `--length` tokens sampled from the prompt's own concept, and
after one from another in-distribution concept. A model that infers the concept gains with the
right document and loses with the wrong one.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from iclgd.data.ginc_hmm import DELIMITER_ID, load_ginc_world, sample_documents
from iclgd.data.ginc_prompts import sample_prompts
from iclgd.training.ginc_eval import hf_next_token_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--prompts", type=int, default=1500)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = load_ginc_world(args.checkpoint)
    logits = hf_next_token_logits(args.checkpoint)
    prompts = sample_prompts(world, 0, 3, args.prompts, seed=5)
    rng = np.random.default_rng(3)
    n_in = len(world.concept_ids("in"))

    def accuracy(tokens: np.ndarray) -> float:
        pred = logits(torch.from_numpy(tokens)).argmax(-1).numpy()
        return float((pred == prompts.labels).mean())

    def with_document(concepts: np.ndarray) -> np.ndarray:
        docs = np.stack([sample_documents(world, 1, args.length, rng, concepts=np.array([c]))[0][0]
                         for c in concepts])
        delim = np.full((len(prompts), 1), DELIMITER_ID, dtype=np.int64)
        return np.concatenate([docs, delim, prompts.tokens], axis=1)

    print(f"no context:             {100 * accuracy(prompts.tokens):.1f} %")
    print(f"own-concept document:   {100 * accuracy(with_document(prompts.concept)):.1f} %")
    other = (prompts.concept + 1) % n_in
    print(f"other-concept document: {100 * accuracy(with_document(other)):.1f} %")


if __name__ == "__main__":
    main()
