"""`load_model`: one entry point for every model iclgd analyses.

A spec is a named model shipped in a registry package (`smollm2-135m`, see
`iclgd.hooks.named_models`), a local Hugging Face folder, a checkpoint-series folder (subfolders
`step{N}/`), a hub name present in the local HF cache, or a native `TransformerBridgeConfig`/dict. The result is a
TransformerLens `TransformerBridge` in eval mode holding the checkpoint's raw weights
(compatibility mode off: no LayerNorm folding, no centering; `model.cfg.iclgd_processing` says
"raw").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from iclgd.errors import IclgdError, first_line
from iclgd.hooks.named_models import (
    converted_folder,
    is_named_model,
    named_model_provenance,
)
from iclgd.hooks.placement import placement_kwargs
from iclgd.hooks.precision import first_non_finite
from iclgd.results import read_json
from iclgd.specs import (
    CHECKPOINT_RE,
    check_model_folder,
    is_checkpoint_series,
    list_checkpoints,
    looks_like_path,
    select_checkpoint,
)

if TYPE_CHECKING:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`"auto"`/None → CUDA when available, else CPU; other values pass through, checked."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IclgdError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Parse a dtype name (`float32`, `bf16`, ...); None → float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise IclgdError(f"unknown dtype {dtype!r}: use one of float32, float64, bfloat16, float16")
    return _DTYPES[key]


def load_model(
    spec: str | os.PathLike[str] | PreTrainedModel | TransformerBridgeConfig | Mapping[str, Any],
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    checkpoint: str | int | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> TransformerBridge:
    """Load a model as a TransformerLens `TransformerBridge` in eval mode, raw weights.

    Args:
        spec: a named model (`"smollm2-135m"`: converted on first use into iclgd's cache, see
            `iclgd.hooks.named_models`), an in-memory HF `PreTrainedModel`, a local HF folder (must hold `config.json`; tokenizer files are used when present,
            otherwise an id-only tokenizer `"<17>"` is attached), a checkpoint-series folder
            (subfolders `step{N}/`; `checkpoint` picks one, default the last), a hub name
            found in the local HF cache (set `HF_HUB_OFFLINE=1` to forbid downloads), or a
            `TransformerBridgeConfig` / dict for a native TransformerLens model.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        dtype: torch dtype or its name; default float32.
        checkpoint: for a checkpoint-series folder, a label (`"step1000"`) or an index
            (`-1` = last); for Pythia / stanford-crfm hub names, a label (`"step1000"`, passed
            as `checkpoint_value`) or an int index (`checkpoint_index`).
        device_map, max_memory, offload_folder: a model larger than one device, spread over
            several (and CPU/disk offload) by Hugging Face / accelerate, for folders and hub
            names (`iclgd.hooks.placement`); `device` is then ignored.

    Returns:
        The bridge, with `cfg.iclgd_source`, `cfg.iclgd_checkpoint`, `cfg.iclgd_processing` and
        (named models) `cfg.iclgd_weights` (source file, sha256, quantisation) recorded for
        provenance; `iclgd.hooks.model_provenance(model)` collects them.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=100))
        >>> bridge = load_model(hf, device="cpu")
        >>> bridge.cfg.n_layers, bridge.cfg.d_model, bridge.cfg.iclgd_processing
        (2, 64, 'raw')
    """
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources import boot_native
    from transformers import PreTrainedModel

    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    place = placement_kwargs(dev, device_map, max_memory,
                             None if offload_folder is None else str(offload_folder))
    if "device_map" in place and not isinstance(spec, str | os.PathLike):
        raise IclgdError("device_map/max_memory apply to models loaded from a folder or a hub "
                         "name; dispatch an in-memory model with accelerate yourself")
    if isinstance(spec, TransformerBridgeConfig | Mapping):
        if checkpoint is not None:
            raise IclgdError("checkpoint= is not supported for native (config-built) models")
        config = spec if isinstance(spec, TransformerBridgeConfig) else dict(spec)
        bridge = boot_native(config, device=str(dev), dtype=dt)
        return _finish(bridge, "native", None)
    if isinstance(spec, PreTrainedModel):
        return _boot_module(spec, dev, dt)
    if not isinstance(spec, str | os.PathLike):
        raise IclgdError(
            f"cannot load a model from {type(spec).__name__}: pass a folder, a hub name, "
            "or a TransformerBridgeConfig/dict"
        )
    path = Path(spec).expanduser()
    if is_named_model(spec) and not path.exists():
        return _load_named(str(spec).lower(), dev, dt, checkpoint, place)
    if path.exists():
        return _load_local(path, dev, dt, checkpoint, place)
    return _load_hub(str(spec), dev, dt, checkpoint, place)


def _load_local(
    path: Path, dev: torch.device, dt: torch.dtype, checkpoint: str | int | None,
    place: dict[str, Any],
) -> TransformerBridge:
    check_model_folder(path)
    if is_checkpoint_series(path):
        label, _step, folder = select_checkpoint(list_checkpoints(path), checkpoint, path)
        return _boot_folder(folder, dev, dt, label, place)
    if checkpoint is not None:
        raise IclgdError(
            f"{path} is a single model folder, not a checkpoint series: drop --checkpoint "
            "or pass the series folder that holds step{N}/ subfolders"
        )
    return _boot_folder(path, dev, dt, None, place)


def _load_named(
    name: str, dev: torch.device, dt: torch.dtype, checkpoint: str | int | None,
    place: dict[str, Any],
) -> TransformerBridge:
    if checkpoint is not None:
        raise IclgdError(f"{name} is a single model, not a checkpoint series: drop --checkpoint")
    folder = converted_folder(name)
    bridge = _boot_folder(folder, dev, dt, None, place)
    bridge.cfg.iclgd_source = name
    bridge.cfg.iclgd_weights = {**named_model_provenance(folder), "folder": str(folder)}
    return bridge


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _boot_folder(
    folder: Path, dev: torch.device, dt: torch.dtype, label: str | None,
    place: dict[str, Any] | None = None,
) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    _quiet_transformers()
    has_tokenizer = any((folder / f).exists() for f in _TOKENIZER_FILES)
    with nullcontext(None) if has_tokenizer else id_tokenizer(_vocab_size(folder)) as tokenizer:
        try:
            bridge = TransformerBridge.boot_transformers(
                str(folder), dtype=dt, tokenizer=tokenizer, **(place or {"device": str(dev)})
            )
        except Exception as err:  # corrupt weights, unsupported architecture, bad config
            raise IclgdError(f"cannot load the model in {folder}: {first_line(err)}") from err
    check_finite(bridge, str(folder))
    return _finish(bridge, str(folder), label)


def _boot_module(hf_model: PreTrainedModel, dev: torch.device, dt: torch.dtype) -> TransformerBridge:
    """Wrap an in-memory HF model (e.g. built with `from_config`) without saving it."""
    from transformer_lens.model_bridge import TransformerBridge

    _quiet_transformers()
    cfg = hf_model.config
    name = getattr(cfg, "_name_or_path", "") or type(hf_model).__name__
    vocab = int(getattr(cfg, "vocab_size", 0) or 1)
    hf_model.config._attn_implementation = "eager"
    torch.nn.Module.to(hf_model, device=dev, dtype=dt)  # in place (transformers' `to` wrapper is untyped)
    with id_tokenizer(vocab) as tokenizer:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, device=str(dev), dtype=dt,
            tokenizer=tokenizer,
        )
    check_finite(bridge, name)
    return _finish(bridge, f"in-memory {type(hf_model).__name__}", None)


def _load_hub(
    name: str, dev: torch.device, dt: torch.dtype, checkpoint: str | int | None,
    place: dict[str, Any],
) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    if looks_like_path(name):
        raise IclgdError(f"unknown model {name!r}: no such folder")
    kwargs: dict[str, Any] = {}
    if checkpoint is not None:
        m = CHECKPOINT_RE.match(str(checkpoint))
        if m:
            kwargs["checkpoint_value"] = int(m.group(1))
        elif re.fullmatch(r"-?\d+", str(checkpoint)):
            kwargs["checkpoint_index"] = int(checkpoint)
        else:
            raise IclgdError(
                f"checkpoint {checkpoint!r} is neither a label like 'step1000' nor an index"
            )
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    _quiet_transformers()
    if not _in_local_cache(name) and offline:
        raise IclgdError(
            f"model {name!r} is not a local folder and is not in the local Hugging Face cache "
            "(HF_HUB_OFFLINE=1): download it where there is network "
            f"(`huggingface-cli download {name}`) and copy the cache here, or pass a local folder"
        )
    try:
        bridge = TransformerBridge.boot_transformers(name, dtype=dt, **place, **kwargs)
    except Exception as err:  # network, missing revision, unsupported architecture, ...
        raise IclgdError(
            f"cannot load model {name!r}: {first_line(err)} (unknown model? pass a local "
            "folder, or make the weights available in the local Hugging Face cache)"
        ) from err
    check_finite(bridge, name)
    return _finish(bridge, name, None if checkpoint is None else str(checkpoint))


def _in_local_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
        return isinstance(hit, str)
    except Exception:  # invalid repo id and the like
        return False


def _finish(bridge: TransformerBridge, source: str, label: str | None) -> TransformerBridge:
    bridge.eval()
    bridge.cfg.iclgd_source = source
    bridge.cfg.iclgd_checkpoint = label
    bridge.cfg.iclgd_processing = "raw"
    return bridge


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Raise `IclgdError` naming the first parameter holding NaN or inf."""
    hf = getattr(model, "original_model", model)
    name = first_non_finite(dict(hf.named_parameters()))  # meta (offloaded) tensors skipped
    if name is not None:
        clean = name.replace("._original_component", "")
        raise IclgdError(f"{where} has non-finite weights (NaN/inf) in {clean}: "
                         "the checkpoint is corrupt or diverged")


def _vocab_size(folder: Path) -> int:
    cfg = read_json(folder / "config.json")
    for key in ("vocab_size", "n_vocab", "padded_vocab_size"):
        if key in cfg:
            return int(cfg[key])
    return int(cfg.get("text_config", {}).get("vocab_size", 0)) or 1


@contextmanager
def id_tokenizer(vocab_size: int) -> Iterator[PreTrainedTokenizerBase]:
    """A tokenizer for models saved without one, as a context: token `i` is the string `<i>`.

    Text like `"<3> <17> <5>"` encodes to `[3, 17, 5]`; models are usually fed token ids
    directly anyway. Token 0 doubles as BOS/EOS/PAD/UNK. The tokenizer lives in a temporary
    folder while the context is open (TransformerLens re-opens it by path while booting a model)
    and the folder is removed on exit; the tokenizer object stays usable.
    """
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<0>", bos_token="<0>", eos_token="<0>", pad_token="<0>"
    )
    with tempfile.TemporaryDirectory(prefix="iclgd-id-tokenizer-") as folder:
        fast.save_pretrained(folder)
        yield AutoTokenizer.from_pretrained(folder)
