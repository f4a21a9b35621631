"""Layer-wise algorithm matching: exact on the constructions, by hand on the bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch

from iclgd.analyses.layerwise import (
    GargSubject,
    LSASubject,
    best_matches,
    construction_subject,
    layerwise_probe,
    probe_error,
    sample_tasks,
)
from iclgd.analyses.layerwise_algorithms import build_iterates, fit_family
from iclgd.cli import main
from iclgd.constructions import ahn_preconditioned_gd, von_oswald_gd, von_oswald_gdpp
from iclgd.errors import IclgdError

SMALL = {"n_tasks": 150, "n_fit_tasks": 150, "steps": (0, 1, 2, 3, 4)}


def test_gd_construction_layer_l_is_gd_step_l():
    c = von_oswald_gd(4, n=6, eta=1.2, steps=3)
    res = layerwise_probe(construction_subject(c), **SMALL)
    assert [(b["layer"], b["algorithm"], b["step"]) for b in res.best] == [
        (1, "gd", 1), (2, "gd", 2), (3, "gd", 3)]
    for b in res.best:
        assert b["error"] <= 1e-10
        assert b["params"]["eta"] == pytest.approx(1.2, rel=1e-8)
        assert b["sens_cos"] == pytest.approx(1.0, abs=1e-12)
        assert "gdpp:" + str(b["layer"]) in b["equivalent"]  # GD++ with gamma = 0
        assert b["margin"] > 0 and b["runner_up"].split(":")[0] != "gd"


def test_gdpp_construction_layer_l_is_gdpp_step_l():
    c = von_oswald_gdpp(4, n=6, eta=1.2, gamma=0.4, layers=3)
    res = layerwise_probe(construction_subject(c), **SMALL)
    first, *rest = res.best
    # one GD++ step is one GD step: reported as GD, GD++ listed as equivalent
    assert (first["algorithm"], first["step"]) == ("gd", 1) and "gdpp:1" in first["equivalent"]
    for layer, b in enumerate(rest, start=2):
        assert (b["algorithm"], b["step"]) == ("gdpp", layer)
        assert b["error"] <= 1e-10
        assert b["params"]["gamma"] == pytest.approx(0.4, rel=1e-6)
        assert b["by_algorithm"]["gd"]["error"] > 1e3 * max(b["error"], 1e-30)


def test_ahn_construction_on_ill_conditioned_inputs_is_preconditioned_gd():
    d, n = 3, 6
    T = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    sigma = T @ T.T / 12
    A = 0.5 * torch.linalg.inv(sigma)
    c = ahn_preconditioned_gd(torch.zeros(d, d, dtype=torch.float64), -A, layers=2, n=n)
    res = layerwise_probe(construction_subject(c), input_transform=T, **SMALL)
    for layer, b in enumerate(res.best, start=1):
        assert (b["algorithm"], b["step"]) == ("pgd", layer) and b["error"] <= 1e-10
        assert b["params"]["eta"] == pytest.approx(0.5, rel=1e-8)
        assert b["margin"] > 1e-6


@pytest.mark.slow
def test_trained_one_layer_lsa_matches_one_gd_step():
    from iclgd.analyses.von_oswald import as_float64, train_lsa

    res = train_lsa(layers=1, steps=1500, batch=512, lr=3e-3, d=4, n=8, progress=False)
    subject = LSASubject(as_float64(res.model), name="lsa1", d=4, n=8)
    out = layerwise_probe(subject, n_tasks=400, n_fit_tasks=400, steps=(0, 1, 2, 3),
                          algorithms=("gd", "newton", "ridge", "ols"))
    (b,) = out.best
    assert (b["algorithm"], b["step"]) == ("gd", 1)
    assert b["sens_cos"] > 0.98


def test_fit_recovers_gd_rate_and_loss_mode_is_layer_independent():
    c = von_oswald_gd(3, n=5, eta=0.8, steps=2)
    subject = construction_subject(c)
    t = sample_tasks(subject, 100, 0)
    target = subject(t, sens=False).preds
    eye = torch.eye(3, dtype=torch.float64)
    fitted = fit_family("gd", t.X, t.Y, t.x_query, target, [1, 2], eye)
    assert fitted[1][0, 0] == pytest.approx(0.8, rel=1e-9)  # layer 1 = one step at 0.8
    assert fitted[2][1, 0] == pytest.approx(0.8, rel=1e-9)
    loss = layerwise_probe(subject, fit="loss", algorithms=("gd",), **SMALL)
    etas = {r["step"]: r["params"]["eta"] for r in loss.rows if r["layer"] == 1 and r["step"]}
    assert etas == {r["step"]: r["params"]["eta"] for r in loss.rows
                    if r["layer"] == 2 and r["step"]}
    its = build_iterates(["ols", "newton"], (t.X, t.Y, t.x_query), (t.X, t.Y), target[:1],
                         steps=[0, 3])
    assert [it.key for it in its] == ["ols:0", "newton:0", "newton:3"]


def test_best_matches_equivalence_margin_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    rows = [
        {"layer": 1, "algorithm": "gdpp", "step": 1, "error": 0.010, "params": {}},
        {"layer": 1, "algorithm": "gd", "step": 1, "error": 0.010, "params": {}},
        {"layer": 1, "algorithm": "newton", "step": 2, "error": 0.050, "params": {}},
        {"layer": 1, "algorithm": "gd", "step": 2, "error": 0.030, "params": {}},
    ]
    preds = {(1, "gdpp:1"): a, (1, "gd:1"): a.clone(), (1, "newton:2"): a + 1,
             (1, "gd:2"): a + 0.5}
    prefs = {"gdpp:1": (2, 5, 1), "gd:1": (1, 3, 1), "newton:2": (0, 1, 2), "gd:2": (1, 3, 2)}
    (b,) = best_matches(rows, preds, prefs)
    assert (b["algorithm"], b["step"], b["equivalent"]) == ("gd", 1, ["gdpp:1"])
    assert b["runner_up"] == "newton:2" and b["margin"] == pytest.approx(0.04)
    assert b["step_margin"] == pytest.approx(0.02)


def test_probe_error_is_zero_for_linearly_decodable_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 3, generator=g, dtype=torch.float64)
    mix = torch.randn(3, 8, generator=g, dtype=torch.float64)
    h = w @ mix + 0.5
    assert probe_error(h[:200], w[:200], h[200:], w[200:]) < 1e-4
    noise = torch.randn(300, 8, generator=g, dtype=torch.float64)
    assert probe_error(noise[:200], w[:200], noise[200:], w[200:]) > 0.9


def test_input_transform_keeps_labels_consistent():
    c = von_oswald_gd(3, n=5, eta=0.8, steps=1)
    T = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    t = sample_tasks(construction_subject(c), 20, 0, T)
    assert torch.allclose(t.Y, torch.einsum("bod,bnd->bno", t.W, t.X))
    assert torch.allclose(t.y_query, torch.einsum("bod,bd->bo", t.W, t.x_query))
    with pytest.raises(IclgdError, match="fit"):
        layerwise_probe(construction_subject(c), fit="best")


def test_garg_head_readout_of_last_layer_is_the_model_output():
    from iclgd.training.regression_model import GargRegressionModel

    torch.manual_seed(0)
    model = GargRegressionModel(3, 6, d_model=16, n_layers=2, n_heads=2).eval()
    subject = GargSubject(model, name="tiny")
    t = sample_tasks(subject, 8, 0)
    out = subject(t, sens=True)
    xs = torch.cat([t.X, t.x_query[:, None]], 1)
    ys = torch.cat([t.Y[..., 0], torch.zeros(8, 1, dtype=torch.float64)], 1)
    with torch.no_grad():
        full = subject.model(xs, ys)[:, -1]
    assert out.preds.shape == (2, 8) and out.hidden.shape == (2, 8, 16)
    assert torch.allclose(out.preds[-1], full, atol=1e-12)
    res = layerwise_probe(GargSubject(model, name="tiny", readout="probe"), n_tasks=60,
                          n_fit_tasks=60, steps=(0, 1, 2), algorithms=("gd", "ols"))
    assert len(res.best) == 2 and all("probe_error" in r for r in res.rows)


def test_cli_construction_json_and_files(tmp_path, capsys):
    out = tmp_path / "layers"
    code = main(["layers", "--construction", "von-oswald-gd", "--layers", "2", "--d", "3",
                 "--n", "5", "--tasks", "80", "--fit-tasks", "80", "--steps", "0,1,2,3",
                 "--json", "--out", str(out)])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    assert [(b["layer"], b["algorithm"], b["step"]) for b in got["best"]] == [
        (1, "gd", 1), (2, "gd", 2)]
    assert all(b["error"] <= 1e-10 and b["margin"] > 0 for b in got["best"])
    for name in ("layers.csv", "layers.json", "layers_best.csv", "layers_heatmap.png",
                 "layers_curves.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "layers.json").read_text())
    assert saved["provenance"]["dtype"] == "float64" and saved["rows"]
    assert main(["layers", "--construction", "von-oswald-gd", "--steps", "1,x"]) == 2


def test_cli_on_a_saved_lsa_folder(tmp_path, capsys):
    from iclgd.training.lsa_checkpoint import save_lsa

    c = von_oswald_gd(3, n=5, eta=0.8, steps=2)
    folder = save_lsa(c.model, tmp_path / "lsa")
    code = main(["layers", "--model", str(folder), "--n", "5", "--tasks", "60", "--fit-tasks",
                 "60", "--steps", "0,1,2,3", "--algorithms", "gd,newton", "--json",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    best = json.loads(capsys.readouterr().out)["best"]
    assert [(b["algorithm"], b["step"]) for b in best] == [("gd", 1), ("gd", 2)]


def test_spectral_recursion_and_its_jacobian_match_the_reference():
    from torch.func import jacfwd

    from iclgd.analyses.layerwise_algorithms import (
        _params,
        _spectral,
        _spectral_jac,
        _spectral_preds,
    )
    from iclgd.constructions import reference as R
    from iclgd.data.regression import sample_linear_tasks

    t = sample_linear_tasks(20, 6, 4, generator=torch.Generator().manual_seed(0))
    spec = _spectral(t.X, t.Y, t.x_query, "gdpp", torch.eye(4, dtype=torch.float64))
    th = torch.tensor([1.3, 0.2], dtype=torch.float64)
    preds = _spectral_preds(spec, *_params(th), 4)
    ref = R.gdpp_iterates(t.X, t.Y, etas=[1.3] * 4, gammas=[0.2] * 4)
    assert torch.allclose(preds, torch.einsum("kbod,bd->kb", ref, t.x_query), atol=1e-12)
    p, J = _spectral_jac(spec, th, 4)
    want = jacfwd(lambda x: _spectral_preds(spec, *_params(x), 4)[4])(th)
    assert torch.allclose(p, preds[4], atol=1e-14) and torch.allclose(J, want, atol=1e-12)
