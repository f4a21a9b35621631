"""`iclgd layers`: which algorithm iterate each layer matches (ICL-objective models), or the logit
lens of ICL against finetuning layer by layer (language models).

- `--construction NAME --layers L` (von-oswald-gd, von-oswald-gdpp, ahn-pgd): a construction,
  whose answer is known (layer l = step l of its algorithm);
- `--train-lsa L`: train a von Oswald linear self-attention model (shared weights, their
  settings) and probe it; the model is saved to OUT/lsa/;
- `--model DIR`: an LSA folder (`lsa.json`), an `iclgd train regression` checkpoint (or its
  series folder: the last step), or any language model `load_model` reads (HF folder, GINC
  checkpoint, cached hub name) for the logit-lens comparison.

Writes layers.csv / layers.json / layers_best.csv / PNGs (or layers_lm.*) to `--out`; `--json`
prints the summary (its `best` has one record per layer).
"""

from __future__ import annotations

import argparse

CONSTRUCTIONS = ("von-oswald-gd", "von-oswald-gdpp", "ahn-pgd")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `layers` subcommand."""
    p = subparsers.add_parser(
        "layers", help="layer-wise match of a model to GD / GD++ / Newton / ridge iterates",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="LSA folder, regression checkpoint, or language model")
    src.add_argument("--construction", choices=CONSTRUCTIONS)
    src.add_argument("--train-lsa", type=int, metavar="L", help="train an L-layer LSA first")
    p.add_argument("--layers", type=int, default=3, help="layers of the construction (default 3)")
    p.add_argument("--eta", type=float, default=None,
                   help="construction step size (default 1.5; ahn-pgd 0.5)")
    p.add_argument("--gamma", type=float, default=0.5, help="GD++ construction gamma (0.5)")
    p.add_argument("--d", type=int, default=10, help="construction input dimension (10)")
    p.add_argument("--n", type=int, default=None,
                   help="context points (constructions/LSA: 10; regression: n_points - 1)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="--train-lsa steps (default 5000 for 1 layer, 7000 for more)")
    p.add_argument("--algorithms", default="gd,gdpp,pgd,newton,ridge,ols")
    p.add_argument("--fit", choices=("match", "loss"), default="match",
                   help="hyperparameters fitted to each layer (match) or to the loss")
    p.add_argument("--readout", choices=("head", "probe"), default="head",
                   help="regression models: read-out head per layer, or a fitted linear probe")
    p.add_argument("--steps", default=None, help="algorithm steps, e.g. 0,1,2,4,8 (default "
                   "0..8,12,16,24,32)")
    p.add_argument("--tasks", type=int, default=2000, help="probe tasks (default 2000)")
    p.add_argument("--fit-tasks", type=int, default=2000, help="fit tasks (default 2000)")
    p.add_argument("--out", default="results/layers", help="output folder")
    lm = p.add_argument_group("language models (logit lens)")
    lm.add_argument("--task", default=None, help="ginc, a built-in task or a .jsonl/.csv file")
    lm.add_argument("--demos", default="1,2,4,8")
    lm.add_argument("--queries", type=int, default=None)
    lm.add_argument("--lr", type=float, default=1e-2, help="finetuning learning rate (1e-2)")
    lm.add_argument("--epochs", type=int, default=1)
    lm.add_argument("--k", type=int, default=3, help="GINC example length (3)")
    lm.add_argument("--control", choices=("none", "untrained"), default="untrained")
    lm.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the subject, run the probe, write and print the results."""
    import torch

    from iclgd.commands.compare import parse_ints
    from iclgd.errors import IclgdError

    if args.threads < 1 or args.tasks < 2 or args.fit_tasks < 2:
        raise IclgdError("--threads must be >= 1, --tasks and --fit-tasks >= 2")
    torch.set_num_threads(args.threads)
    steps = parse_ints(args.steps, "--steps") if args.steps else None
    if steps is not None and min(steps) < 0:
        raise IclgdError("--steps must be >= 0")
    result = _lm(args) if _is_language_model(args) else _icl_objective(args, steps)
    result.save(args.out)
    if args.json:
        print(result.to_json())
        return 0
    _print(result, args.out)
    return 0


def _is_language_model(args: argparse.Namespace) -> bool:
    from pathlib import Path

    from iclgd.training.lsa_checkpoint import is_lsa_folder

    if args.model is None:
        return False
    path = Path(args.model)
    return not (is_lsa_folder(path) or _regression_folder(path) is not None)


def _regression_folder(path):
    from iclgd.hooks.loading import is_checkpoint_series

    if (path / "regression_model.json").is_file():
        return path
    if path.is_dir() and is_checkpoint_series(path):
        from iclgd.training.regression import checkpoint_steps_in

        steps = checkpoint_steps_in(path)
        if steps and (path / f"step{steps[-1]}" / "regression_model.json").is_file():
            return path / f"step{steps[-1]}"
    return None


def _icl_objective(args: argparse.Namespace, steps):
    from iclgd.analyses.layerwise import layerwise_probe
    from iclgd.analyses.layerwise_algorithms import DEFAULT_STEPS, check_algorithms
    from iclgd.results import provenance

    subject, transform, checkpoint = _subject(args)
    algorithms = check_algorithms(args.algorithms.split(","))
    prov = provenance(model=subject.name, checkpoint=checkpoint, seed=args.seed,
                      dtype="float64", device="cpu", weight_processing="raw", analysis="layers")
    return layerwise_probe(subject, algorithms=algorithms, fit=args.fit, n_tasks=args.tasks,
                           n_fit_tasks=args.fit_tasks, steps=steps or DEFAULT_STEPS,
                           seed=args.seed, input_transform=transform, provenance=prov)


def _subject(args: argparse.Namespace):
    """(subject, input transform or None, checkpoint path or None)."""
    from pathlib import Path

    from iclgd.analyses import layerwise as lw
    from iclgd.errors import IclgdError

    if args.construction:
        return (*_construction(args), None)
    if args.train_lsa is not None:
        from iclgd.analyses.von_oswald import as_float64, train_lsa
        from iclgd.training.lsa_checkpoint import save_lsa

        if args.train_lsa < 1:
            raise IclgdError("--train-lsa needs at least 1 layer")
        steps = args.train_steps or (5000 if args.train_lsa == 1 else 7000)
        n = args.n or 10
        res = train_lsa(layers=args.train_lsa, steps=steps, d=args.d, n=n, seed=args.seed)
        folder = save_lsa(res.model, Path(args.out) / "lsa", extra={
            "trained": {"layers": args.train_lsa, "steps": steps, "d": args.d, "n": n,
                        "seed": args.seed, "final_loss": res.history[-1][1]}})
        name = f"lsa-{args.train_lsa}layer-shared ({steps} steps)"
        return lw.LSASubject(as_float64(res.model), name=name, d=args.d, n=n), None, str(folder)
    path = Path(args.model)
    reg = _regression_folder(path)
    if reg is not None:
        from iclgd.training.regression_model import load_regression_model

        model = load_regression_model(reg)
        return lw.GargSubject(model, name=f"garg-regression {reg.name}", n=args.n,
                              readout=args.readout), None, str(reg)
    import torch

    from iclgd.training.lsa_checkpoint import load_lsa

    model = load_lsa(path, dtype=torch.float64)
    d = int(model.cfg.d_model) - 1
    return lw.LSASubject(model, name=path.name, d=d, n=args.n or 10), None, str(path)


def _construction(args: argparse.Namespace):
    import torch

    from iclgd import constructions as C
    from iclgd.analyses.layerwise import construction_subject

    d, n, L = args.d, args.n or 10, args.layers
    if args.construction == "von-oswald-gd":
        c = C.von_oswald_gd(d, n=n, eta=args.eta or 1.5, steps=L)
        return construction_subject(c), None
    if args.construction == "von-oswald-gdpp":
        c = C.von_oswald_gdpp(d, n=n, eta=args.eta or 1.5, gamma=args.gamma, layers=L)
        return construction_subject(c), None
    # Ahn et al.'s ill-conditioned inputs x = U D z, z ~ U(-0.5, 0.5)^d, covariance U D^2 U^T / 12,
    # and their preconditioned GD layers with A = eta Sigma^-1 (P = 0, Q = -A)
    gen = torch.Generator().manual_seed(args.seed + 99)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    D = torch.diag(torch.logspace(0, 1, d, dtype=torch.float64))
    T = U @ D
    sigma = T @ T.T / 12.0
    A = (args.eta or 0.5) * torch.linalg.inv(sigma)
    c = C.ahn_preconditioned_gd(torch.zeros(d, d, dtype=torch.float64), -A, layers=L, n=n)
    return construction_subject(c), T


def _lm(args: argparse.Namespace):
    from iclgd.analyses.layerwise_lm import logit_lens_probe
    from iclgd.commands.compare import parse_ints
    from iclgd.errors import IclgdError

    if args.task is None:
        raise IclgdError("a language model needs --task (ginc, a built-in task or a file)")
    return logit_lens_probe(args.model, args.task, parse_ints(args.demos, "--demos"),
                            lr=args.lr, epochs=args.epochs, n_queries=args.queries,
                            seed=args.seed, k=args.k, control=args.control == "untrained",
                            top_k=args.top_k)


def _print(result, out) -> None:
    best = getattr(result, "best", None)
    if best is None:
        from iclgd.analyses.layerwise_lm import print_lens

        print_lens(result)
    else:
        print(f"{result.settings['model']} (fit: {result.settings['fit']}; error = mean squared "
              "prediction difference on held-out tasks)")
        print(f"{'layer':>5} {'best':<12} {'error':>10} {'runner-up':<12} {'margin':>10} "
              f"{'sens cos':>8}  equivalent")
        for b in best:
            print(f"{b['layer']:>5} {b['algorithm'] + ':' + str(b['step']):<12} {b['error']:>10.3g} "
                  f"{str(b['runner_up']):<12} {b['margin']:>10.3g} {b['sens_cos']:>8.4f}  "
                  f"{', '.join(b['equivalent'])}")
    print(f"results in {out}/")
