"""Result files: atomic text and figure writes leave either the old file or the new one."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from iclgd.results import atomic_write_text, save_figure  # noqa: E402


def test_save_figure_writes_a_png_and_no_temporaries(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "f.png", dpi=50)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]


def test_failed_writes_keep_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "t.txt", "old")

    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Broken(), tmp_path / "t.txt")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_read_json_turns_missing_and_corrupt_files_into_bad_input(tmp_path):
    from iclgd.errors import IclgdError
    from iclgd.results import read_json

    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(IclgdError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(IclgdError, match="nope.json not found"):
        read_json(tmp_path / "nope.json")


def test_a_corrupt_ginc_json_is_bad_input(tmp_path):
    from iclgd.data.ginc_hmm import load_ginc_config
    from iclgd.errors import IclgdError

    with pytest.raises(IclgdError, match="ginc.json not found"):
        load_ginc_config(tmp_path)
    (tmp_path / "ginc.json").write_text("{not json")
    with pytest.raises(IclgdError, match="not valid JSON"):
        load_ginc_config(tmp_path)
