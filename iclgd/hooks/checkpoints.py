"""Checkpoint series: a folder whose subfolders (`step0/`, `step10/`, ...) are HF checkpoints.

`iclgd.specs.list_checkpoints` sorts them by step number (numeric, not lexical);
`iter_checkpoints` (through `SeriesLoader`) builds the TransformerBridge skeleton once and loads
each checkpoint's weights into it in place, refusing a checkpoint of another architecture
(`arch_difference`); `check_one_architecture` checks a whole series before a long run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from iclgd.errors import IclgdError, first_line
from iclgd.hooks.edit import refresh_split_weights
from iclgd.hooks.loading import check_finite, load_model
from iclgd.results import read_json
from iclgd.specs import every_kth, list_checkpoints

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_IGNORED_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
    "use_cache", "_attn_implementation_autoset", "output_attentions",
}


def arch_signature(folder: str | Path) -> dict[str, Any]:
    """The architecture part of a checkpoint's config.json (paths, versions, dtype dropped)."""
    folder = Path(folder)
    cfg = read_json(folder / "config.json")
    return {k: v for k, v in cfg.items() if k not in _IGNORED_CONFIG_KEYS}


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The raw HF state dict of a checkpoint folder, under the current HF class's key names.

    Loaded through `AutoModelForCausalLM.from_pretrained`, so renamed keys (e.g. GPT-NeoX's
    on-disk `embed_out` vs `lm_head`), sharded files and `pytorch_model.bin` are all handled;
    tensors are bit-identical to the files'.
    """
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    except Exception as err:  # corrupt file, missing weights, unknown architecture
        raise IclgdError(f"cannot read the weights in {folder}: {first_line(err)}") from err
    return dict(hf.state_dict())


def arch_difference(reference: Mapping[str, Any], other: Mapping[str, Any]) -> str | None:
    """The config keys in which signature `other` describes a different architecture from
    `reference` (`arch_signature`s; the first five, sorted, comma-separated), or None when they
    describe the same one."""
    keys = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
    return ", ".join(keys[:5]) if keys else None


def check_one_architecture(checkpoints: Iterable[tuple[str, Path]]) -> None:
    """Raise `IclgdError` unless the config.json of every `(label, folder)` describes the first
    one's architecture: before a long run, not at the checkpoint that differs. Unreadable
    configs are skipped (loading that checkpoint reports them)."""
    first: tuple[str, dict[str, Any]] | None = None
    for label, folder in checkpoints:
        try:
            sig = arch_signature(folder)
        except (OSError, ValueError):
            continue
        if first is None:
            first = (label, sig)
        elif (diff := arch_difference(first[1], sig)) is not None:
            raise IclgdError(
                f"incompatible architectures: {label} differs from {first[0]} in {diff}; one "
                "series must share one architecture"
            )


def load_weights_into(
    model: TransformerBridge, folder: Path, reference: dict[str, Any] | None = None
) -> None:
    """Load checkpoint `folder`'s raw HF weights into an existing bridge, in place.

    Checks that the architecture matches `reference` (a config signature) and that every
    weight is finite; re-splits fused QKV projections the bridge keeps as separate copies.
    """
    folder = Path(folder)
    if reference is not None and (diff := arch_difference(reference, arch_signature(folder))):
        raise IclgdError(
            f"checkpoint {folder.name} has a different architecture from the first checkpoint "
            f"(config differs in {diff}): one series must share one architecture"
        )
    state = read_hf_weights(folder)
    param = next(model.original_model.parameters())
    state = {k: v.to(device=param.device, dtype=param.dtype) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise IclgdError(f"checkpoint {folder.name} has unexpected weights: "
                         f"{', '.join(result.unexpected_keys[:3])}")
    refresh_split_weights(model)
    check_finite(model, f"checkpoint {folder.name}")


class SeriesLoader:
    """One bridge for the checkpoints of a series: the first checkpoint loaded builds it
    (`load_model`), each later one loads its weights into it in place (`load_weights_into`,
    checked against the first one's `arch_signature`)."""

    def __init__(self, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = None) -> None:
        self.device, self.dtype = device, dtype
        self.model: TransformerBridge | None = None
        self.reference: dict[str, Any] | None = None

    def load(self, label: str, folder: Path) -> TransformerBridge:
        """The bridge holding checkpoint `folder` (the same object every time once built),
        its `cfg.iclgd_checkpoint` set to `label`."""
        if self.model is None or self.reference is None:
            self.model = load_model(folder, device=self.device, dtype=self.dtype)
            self.reference = arch_signature(folder)
        else:
            load_weights_into(self.model, folder, self.reference)
        self.model.cfg.iclgd_checkpoint = label
        return self.model


def iter_checkpoints(
    folder: str | Path,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    every: int = 1,
    on_error: Callable[[str, int, Exception], None] | None = None,
) -> Iterator[tuple[str, int, TransformerBridge]]:
    """Yield `(label, step, model)` for each checkpoint in step order, reusing one bridge.

    The bridge is built from the first checkpoint; later checkpoints' weights are loaded into
    it in place (the same object is yielded each time: read what you need before advancing).
    `every=k` keeps every k-th checkpoint (the last one always). A checkpoint that fails to load
    raises `IclgdError`, or, when `on_error` is given, is reported to it and skipped.

    Example:
        >>> import pathlib, tempfile
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for step in (0, 5):
        ...     cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
        ...     GPT2LMHeadModel(cfg).save_pretrained(root / f"step{step}")
        >>> [(label, step, m.cfg.n_layers) for label, step, m in iter_checkpoints(root, device="cpu")]
        [('step0', 0, 1), ('step5', 5, 1)]
    """
    loader = SeriesLoader(device, dtype)
    for label, step, path in every_kth(list_checkpoints(folder), every):
        try:
            model = loader.load(label, path)
        except Exception as err:  # noqa: BLE001 - reported per checkpoint, never silently
            if on_error is None:
                raise IclgdError(f"checkpoint {label} failed to load: {err}") from err
            on_error(label, step, err)
            continue
        yield label, step, model
