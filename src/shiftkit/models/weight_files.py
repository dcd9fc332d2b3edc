"""Weight files (:mod:`.weights`): reading a state dict from a PyTorch or safetensors file (told apart by
its first bytes; a pickle that would run code refused), unwrapping checkpoints and DDP prefixes, mapping
Hugging Face's ResNet names to torchvision's, and writing a model's weights as safetensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..errors import ShiftkitError


def _unwrap(state: object, shown: str) -> Dict[str, Tensor]:
    """The tensors of a state dict, a checkpoint holding one (``state_dict``, ``model``), or a DDP model's."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ShiftkitError(f"{shown} holds no state dict (a mapping of parameter names to tensors)")
    odd = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if odd is not None:
        raise ShiftkitError(f"{shown} is not a state dict: its entry {str(odd)[:60]!r} is not a named tensor")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_safetensors(path: Path, shown: str) -> Dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ShiftkitError(f"{shown} is not a readable weight file (damaged or truncated?): {reason}") from None


def read(path: Path, option: str = "model.weights") -> Dict[str, Tensor]:
    """The state dict in ``path`` (module docstring: formats, wrappers, refusals), on the CPU."""
    shown = f"{option}: {path}"
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise ShiftkitError(f"{shown} cannot be read: {exc.strerror or exc}") from None
    if len(head) < 9:
        raise ShiftkitError(f"{shown} is empty or truncated ({len(head)} bytes)")
    # safetensors: an 8-byte little-endian header length, then the JSON header; a torch file is a zip
    # (torch.save) or a pickle. Told apart by the first bytes, whatever the file's name.
    if head[8:9] == b"{" or not (head.startswith(b"PK") or head[:1] == b"\x80"):
        return _from_layout(_read_safetensors(path, shown))
    try:
        # From an open file: torch.load given a path named *.safetensors would take it for one.
        with open(path, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "Weights only load failed" in text or "Unsupported global" in text or "Unsupported operand" in text:
            raise ShiftkitError(
                f"{shown} is a pickle holding more than tensors (it could run code when loaded), so shiftkit does not"
                " load it; save the weights alone with torch.save(model.state_dict(), file), or as safetensors"
            ) from None
        raise ShiftkitError(f"{shown} is not a readable weight file (damaged or truncated?): {text[:200]}") from None
    return _from_layout(_unwrap(state, shown))


#: Hugging Face ``ResNetForImageClassification`` name patterns -> torchvision's.
_HF_NAMES = [
    (r"^(?:resnet\.)?embedder\.embedder\.convolution\.", "conv1."),
    (r"^(?:resnet\.)?embedder\.embedder\.normalization\.", "bn1."),
    (r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", "layer{0}.{1}.downsample.0."),
    (r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", "layer{0}.{1}.downsample.1."),
    (r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", "layer{0}.{1}.conv{2}."),
    (r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", "layer{0}.{1}.bn{2}."),
    (r"^classifier\.1\.", "fc."),
]


def _hf_name(key: str) -> str:
    for pattern, target in _HF_NAMES:
        match = re.match(pattern, key)
        if match:
            numbers = [int(n) for n in match.groups()]
            # stages count from 0 and torchvision's layers from 1; so do HF's convolutions within a block
            shifted = [numbers[0] + 1, *numbers[1:2], *(n + 1 for n in numbers[2:])] if numbers else []
            return target.format(*shifted) + key[match.end():]
    return key


def from_hugging_face(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A Hugging Face ``ResNetForImageClassification`` / ``ResNetModel`` state dict under torchvision's
    names (``resnet.encoder.stages.0.layers.1.layer.0.convolution.weight`` -> ``layer1.1.conv1.weight``).

    >>> list(from_hugging_face({"resnet.encoder.stages.2.layers.0.shortcut.normalization.bias": 0}))
    ['layer3.0.downsample.1.bias']
    """
    return {_hf_name(k): v for k, v in state.items()}


def _from_layout(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    if any(k.startswith(("resnet.embedder.", "embedder.embedder.")) for k in state):
        return from_hugging_face(state)
    return state


def save(net, path: Path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``net``'s state dict (or ``net``, a state dict) to ``path`` as safetensors, atomically (what
    ``model.weights`` and ``shiftkit.load`` read back;
    ``metadata``: strings kept in the file's header; only what the weights depend on, so that equal weights
    make equal files)."""
    from safetensors.torch import save

    from ..files import atomic

    state = net.state_dict() if isinstance(net, nn.Module) else net
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = save(state, metadata=metadata)
    with atomic(path, binary=True) as handle:
        handle.write(data)

