import torch

from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer
from iclgd.training.lsa_checkpoint import is_lsa_folder, load_lsa, read_lsa_metadata, save_lsa


def test_save_load_roundtrip_shared_and_float64(tmp_path):
    cfg = LinearAttentionConfig(d_model=4, n_layers=3, shared_weights=True, init_scale=0.5)
    model = LinearAttentionTransformer(cfg, seed=3)
    folder = save_lsa(model, tmp_path / "lsa", extra={"steps": 7})
    assert is_lsa_folder(folder) and read_lsa_metadata(folder)["steps"] == 7
    back = load_lsa(folder)
    x = torch.randn(2, 5, 4)
    assert torch.equal(back(x), model(x))
    assert back.blocks[0].attn.W_Q is back.blocks[2].attn.W_Q  # still shared
    wide = load_lsa(folder, dtype=torch.float64)
    assert wide.cfg.dtype == torch.float64
    assert torch.allclose(wide(x.double()), model(x).double(), atol=1e-5)
    save_lsa(model, folder)  # overwriting an existing folder works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
