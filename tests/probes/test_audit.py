import json

import pytest
import torch

from iclgd.cli import main
from iclgd.constructions import von_oswald_gd
from iclgd.constructions.reference import gd_predict
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer
from iclgd.probes.audit import audit, audit_construction, density_at_width, perturbed_model


def test_audit_report_gd():
    r = audit_construction(von_oswald_gd(10, n=10, eta=6.0), tasks=200)
    assert r["max_abs_error"] <= 1e-10
    assert r["loss_construction"] == pytest.approx(r["loss_reference"], abs=1e-12)
    assert r["loss_convention"] == "half_mse"
    wk = r["density"]["W_K"]
    assert wk["shape"] == [11, 11] and wk["nonzero"] == 10
    assert wk["fraction_below"]["1e-02"] == pytest.approx(111 / 121)
    assert set(wk["fraction_below"]) == {"1e-02", "1e-03", "1e-04", "1e-05", "1e-06"}
    assert r["density_at_width"]["embedded"]["W_K"] == pytest.approx(10 / 4096**2)
    # Shen's reading: d = d_out = 2048 -> W_K 2048 non-zeros, W_V dense W_0 block + identity
    assert r["density_at_width"]["scaled"]["W_K"] == pytest.approx(2048 / 4096**2)
    assert r["density_at_width"]["scaled"]["W_V"] == pytest.approx((2048 * 2048 + 2048) / 4096**2)
    curve = r["perturbation"]["curve"]
    assert [c["eps"] for c in curve] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert curve[0]["max_abs_error"] < curve[-1]["max_abs_error"]
    assert curve[0]["max_abs_error"] > 0


def test_perturbation_is_relative_to_rms():
    m = LinearAttentionTransformer(LinearAttentionConfig(d_model=30, dtype=torch.float64))
    noisy = perturbed_model(m, 1e-2, torch.Generator().manual_seed(0))
    W, Wn = m.blocks[0].attn.W_Q, noisy.blocks[0].attn.W_Q
    rms = float(W.detach().norm()) / W.numel() ** 0.5
    assert float((Wn - W).std()) == pytest.approx(1e-2 * rms, rel=0.1)


def test_user_audit_of_trained_like_weights():
    c = von_oswald_gd(4, n=5, eta=2.0)
    r = audit(c.model, lambda X, Y, q: gd_predict(X, Y, q, eta=2.0), d=4, n=5, tasks=50)
    assert r["max_abs_error"] <= 1e-10 and r["construction"] == "user"
    assert "W_Q.0.0" in r["density"]
    r2 = audit(c.model, lambda X, Y, q: gd_predict(X, Y, q, eta=1.0), d=4, n=5, tasks=50)
    assert r2["max_abs_error"] > 1e-3


def test_density_at_width_without_scaled_counts():
    out = density_at_width({"A": torch.eye(3)})
    assert out["embedded"]["A"] == pytest.approx(3 / 4096**2) and "scaled" not in out


@pytest.mark.parametrize(
    "name,extra",
    [
        ("von-oswald-gd", ["--d", "3", "--n", "4", "--d-out", "2", "--steps", "2"]),
        ("von-oswald-gdpp", ["--d", "3", "--n", "4", "--layers", "2"]),
        ("ahn-pgd", ["--d", "3", "--n", "4"]),
        ("dual-form", ["--d", "3", "--n", "4"]),
    ],
)
def test_cli_exact_constructions(name, extra, capsys):
    assert main(["audit", name, "--tasks", "50", "--json", *extra]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["construction"] == name and r["max_abs_error"] <= 1e-10


def test_cli_approximate_and_outputs(tmp_path, capsys):
    assert main(["audit", "von-oswald-standard-tokens", "--d", "3", "--n", "3", "--tasks", "20",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "error_vs_temperature" in text
    r = json.loads((tmp_path / "audit.json").read_text())
    errs = [row["max_abs_error"] for row in r["error_vs_temperature"]]
    assert errs[0] > errs[-1]
    assert (tmp_path / "perturbation.csv").exists() and (tmp_path / "perturbation.png").exists()
    assert (tmp_path / "provenance.json").exists()


@pytest.mark.parametrize(
    "args", [["--n", "0"], ["--d", "0"], ["--eta", "nan"], ["--tasks", "0"], ["--layers", "0"]]
)
def test_cli_bad_arguments_exit_2(args, capsys):
    name = "von-oswald-gdpp" if "--layers" in args else "von-oswald-gd"
    assert main(["audit", name, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
