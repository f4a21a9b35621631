"""`import iclgd`: the public names resolve lazily, each has a docstring example, and every
example runs (on the README's tiny GPT-2)."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest
import torch

import iclgd
import iclgd.hooks

PUBLIC = sorted(iclgd.__all__)


@pytest.fixture(scope="module")
def globs():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=100, bos_token_id=0,
                     eos_token_id=0)
    model = iclgd.load_model(GPT2LMHeadModel(cfg), device="cpu")
    tokens = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"torch": torch, "model": model, "tokens": tokens,
            **{name: getattr(iclgd, name) for name in PUBLIC}}


def test_import_is_light_and_names_resolve():
    code = ("import sys, iclgd; assert 'torch' not in sys.modules, 'import iclgd loaded torch'; "
            "print(sorted(set(iclgd.__all__) - set(dir(iclgd))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert set(PUBLIC) == set(iclgd._HOME)
    for name in PUBLIC:
        assert getattr(iclgd, name).__module__.startswith("iclgd."), name
    with pytest.raises(AttributeError):
        iclgd.no_such_name  # noqa: B018


def test_subpackages_resolve_as_attributes():
    code = ("import iclgd; m = iclgd.hooks; import iclgd.hooks as h; assert m is h; "
            "print(sorted(n for n in iclgd._SUBPACKAGES if not hasattr(iclgd, n)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert {"hooks", "probes", "analyses"} <= set(dir(iclgd))


def test_hooks_all_is_public_and_importable():
    for name in iclgd.hooks.__all__:
        assert not name.startswith("_") and getattr(iclgd.hooks, name) is not None


@pytest.mark.parametrize("name", [*PUBLIC, "hooks.act_names", "hooks.stack_layers"])
def test_docstring_example_runs(name, globs):
    obj = iclgd
    for part in name.split("."):
        obj = getattr(obj, part)
    doc = obj.__doc__ or ""
    assert "Example:" in doc and ">>>" in doc, f"{name} has no docstring example"
    test = doctest.DocTestParser().get_doctest(doc, dict(globs), name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda text: pytest.fail(text, pytrace=False))
    assert runner.failures == 0
