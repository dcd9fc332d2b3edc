"""Pretrained weights and frozen backbones: the options every model shares, ``weights`` and ``freeze``.

``model.weights=FILE`` loads a state dict into the freshly built model:

- the file is a PyTorch file (``torch.save(model.state_dict())``: torchvision's ``resnet50-0676ba61.pth``,
  a checkpoint holding it under ``state_dict`` or ``model``, a ``module.`` prefix of DDP) read with
  ``torch.load(weights_only=True)``, so a pickle that would run code is refused; or a ``safetensors`` file
  (timm, Hugging Face), recognized by its contents, not its name. Hugging Face's ``ResNetForImageClassification``
  names are mapped to torchvision's (:func:`from_hugging_face`); timm's ResNets already use them;
- every tensor must fit the model (``strict`` loading), except the classifier head (the model's last
  child, ``fc`` for the ResNets): when its shape differs (1000 ImageNet classes, 2 here) or the file has
  none, the model keeps its own freshly initialized head, as torchvision initializes a new ``nn.Linear``;
- a 3-channel stem loads into a 1-channel model by summing its filters over the input channels (timm's
  ``adapt_input_conv``), so RGB weights serve grayscale data;
- the file's sha256 is part of the run's identity (its path is not: a moved file names the same run) and
  ``run.json`` records it (:func:`identity`, :func:`describe`).

``model.weights=imagenet`` is torchvision's ImageNet weights for ``resnet18``, ``resnet34``, ``resnet50``
(``IMAGENET1K_V1``, what ``pretrained=True`` gave [W]): read from torch's hub cache
(``$TORCH_HOME/hub/checkpoints``) when the file is there, else fetched by torchvision's weights API where
torchvision imports, else a one-line error saying which file to fetch and where to put it.

``model.freeze=backbone`` trains the head only: every other parameter stops requiring gradients (the
optimizer gets the head's only) and every BatchNorm outside the head keeps its loaded running
statistics, in training mode too (:class:`FrozenBatchNorm`). For a linear probe on many runs, extracting
the features once is faster: ``data.features_from`` (:mod:`shiftkit.data.features`).

Reading and writing weight files lives in :mod:`.weight_files`.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ShiftkitError
from .weight_files import from_hugging_face, read, save  # noqa: F401

#: torchvision's ``IMAGENET1K_V1`` file per architecture; the 8 hex digits begin the file's sha256.
IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
IMAGENET_URL = "https://download.pytorch.org/models/"
FREEZE = ("none", "backbone")


def hub_checkpoints() -> Path:
    """Where torch's hub keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _imagenet(model: str, option: str) -> Path:
    if model not in IMAGENET_FILES:
        raise ShiftkitError(f"{option}=imagenet: torchvision's ImageNet weights exist for {', '.join(IMAGENET_FILES)},"
                            f" not model '{model}'; pass {option}=<file>")
    file = hub_checkpoints() / IMAGENET_FILES[model]
    if file.is_file():
        return file
    try:
        import torchvision.models as tvm
    except Exception:  # not installed, or (as beside some torch builds) failing to import
        raise ShiftkitError(
            f"{option}=imagenet needs {file.name}: fetch {IMAGENET_URL}{file.name} into {file.parent}/ "
            f"(torchvision, which would fetch it, does not import here), or pass {option}=<file>"
        ) from None
    try:
        tvm.get_weight(f"{model.replace('resnet', 'ResNet')}_Weights.IMAGENET1K_V1").get_state_dict(
            progress=True, check_hash=True)
    except Exception as exc:  # offline (URLError), a bad download (hash mismatch), a full disk
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ShiftkitError(f"{option}=imagenet: torchvision could not fetch {file.name} ({reason}); fetch "
                            f"{IMAGENET_URL}{file.name} into {file.parent}/, or pass {option}=<file>") from None
    if not file.is_file():
        raise ShiftkitError(f"{option}=imagenet: torchvision did not leave {file.name} in {file.parent}")
    return file


def resolve(model: str, spec: str, option: str = "model.weights") -> Path:
    """The weight file ``spec`` names for ``model``: ``imagenet`` or a path (``~`` expanded)."""
    if spec == "imagenet":
        return _imagenet(model, option)
    path = Path(spec).expanduser()
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise ShiftkitError(f"{option}={spec}: {what}; it must name a weight file (.pth, .pt or .safetensors)")
    return path


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    """The file's sha256, computed once per (path, size, modification time) in a process."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def identity(model: str, spec: Optional[str], option: str = "model.weights") -> Optional[str]:
    """What a run's identity holds for ``spec``: ``sha256:<hex>`` of the file it names (None for none)."""
    return None if spec is None else f"sha256:{sha256(resolve(model, spec, option))}"


def describe(model: str, spec: str, option: str = "model.weights") -> Dict[str, str]:
    """``{"file", "sha256"}`` for ``run.json``."""
    path = resolve(model, spec, option)
    return {"file": str(path.resolve()), "sha256": sha256(path)}


def head_name(net: nn.Module) -> str:
    """The classifier head of a shiftkit model: its last child (``fc``, ``linear``, a Sequential's last layer)."""
    names = [name for name, _ in net.named_children()]
    if not names:
        raise ShiftkitError(f"model {type(net).__name__} has no submodules, so no head to tell from a backbone")
    return names[-1]


def _in_head(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def load(net: nn.Module, state: Dict[str, Tensor], shown: str, model: str) -> Dict[str, object]:
    """Load ``state`` into ``net`` strictly, but for the head (kept when it does not fit) and a 3-channel
    stem (summed for a 1-channel one). Returns what happened: ``{"head": "loaded" | "replaced" | "new",
    "input_channels_summed": bool}``."""
    own = net.state_dict()
    head = head_name(net)
    state = dict(state)
    summed = _adapt_stem(state, own)
    file_head = {k for k in state if _in_head(k, head)}
    fits = file_head == {k for k in own if _in_head(k, head)} and all(state[k].shape == own[k].shape for k in file_head)
    if not fits:
        for key in file_head:
            del state[key]
        state.update({k: v for k, v in own.items() if _in_head(k, head)})
    # Files saved before PyTorch 0.4.1 have no BatchNorm step counters; torch's strict loading accepts that.
    state.update({k: v for k, v in own.items() if k.endswith(".num_batches_tracked") and k not in state})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {_few(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if keys]
        raise ShiftkitError(f"{shown} does not fit model '{model}' (another architecture or width?): {'; '.join(parts)}")
    if not any(t.is_meta for t in own.values()):  # a model on the meta device (a dry run) only checks the fit
        with torch.no_grad():
            net.load_state_dict(state, strict=True)
    return {"head": "loaded" if fits else "replaced" if file_head else "new", "input_channels_summed": summed}


def _few(keys) -> str:
    keys = list(keys)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _adapt_stem(state: Dict[str, Tensor], own: Dict[str, Tensor]) -> bool:
    """Sum a 3-channel first convolution over its input channels where the model's stem takes 1 channel."""
    first = next(iter(own), None)
    if first is None or first not in state:
        return False
    ours, theirs = own[first].shape, state[first].shape
    if len(ours) == 4 and len(theirs) == 4 and ours[1] == 1 and theirs[1] == 3 and ours[:1] + ours[2:] == theirs[:1] + theirs[2:]:
        state[first] = state[first].sum(dim=1, keepdim=True)
        return True
    return False


class FrozenBatchNorm(nn.Module):
    """Marks a BatchNorm whose running statistics stay as loaded: :func:`freeze` swaps its class to a
    subclass of this and of its own class, whose ``train()`` keeps it in evaluation mode."""

    def train(self, mode: bool = True):
        return super().train(False)


class FrozenBatchNorm1d(FrozenBatchNorm, nn.BatchNorm1d):
    pass


class FrozenBatchNorm2d(FrozenBatchNorm, nn.BatchNorm2d):
    pass


class FrozenBatchNorm3d(FrozenBatchNorm, nn.BatchNorm3d):
    pass


#: Module-level classes, so that a frozen model pickles (``torch.save(model)``) and deep-copies.
_FROZEN = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d, nn.BatchNorm3d: FrozenBatchNorm3d}


def _frozen_class(cls: type) -> type:
    if cls not in _FROZEN:
        raise ShiftkitError(f"model.freeze=backbone cannot freeze a {cls.__name__}; it knows BatchNorm1d, 2d and 3d")
    return _FROZEN[cls]


def check_freeze(part: str) -> None:
    if part not in FREEZE:
        raise ShiftkitError(f"model.freeze must be one of {', '.join(FREEZE)}, got '{part}'")


def frozen(net: nn.Module, part: str) -> nn.Module:
    """``part="backbone"``: everything but the head stops learning (module docstring); ``"none"``: nothing."""
    check_freeze(part)
    if part == "none":
        return net
    head = getattr(net, head_name(net))
    heads = set(head.modules())
    for module in net.modules():
        if module in heads:
            continue
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, FrozenBatchNorm):
            module.__class__ = _frozen_class(type(module))
            module.eval()
    if not any(p.requires_grad for p in head.parameters()):
        raise ShiftkitError(f"model.freeze=backbone: the head of {type(net).__name__} has no parameters to train")
    return net


def finish(name: str, net: nn.Module, weights: Optional[str] = None, freeze: str = "none") -> nn.Module:
    """Every model's shared options (module docstring): load ``weights``, then freeze ``freeze``."""
    if weights is not None:
        path = resolve(name, weights)
        info = load(net, read(path), f"model.weights: {path}", name)
        net.weights_info = {**describe(name, weights), **info}
    return frozen(net, freeze)


def split_head(net: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` sharing ``net``'s modules: the backbone is ``net`` with its head replaced by
    ``nn.Identity`` (a shallow copy), so ``head(backbone(x)) == net(x)``."""
    import copy

    name = head_name(net)
    head = getattr(net, name)
    backbone = copy.copy(net)
    backbone._modules = dict(net._modules)
    backbone._modules[name] = nn.Identity()
    return backbone, head

