"""Pretrained weights (``model.weights``, ``model.freeze``) and frozen features (``data.features_from``):
torchvision's ResNet layout, strict loading from torch and safetensors files, head replacement, the
1-channel stem, Hugging Face names, frozen backbones in training, the feature cache, run identities,
one-line refusals and the end-to-end presets on the CelebA and Waterbirds fixtures.

Every model here is tiny (width 4 or 8) and every file is written by the test; nothing downloads."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from shiftkit import data, losses, models, optim, runner, weighting
from shiftkit.cli import main
from shiftkit.config import compose
from shiftkit.data import features
from shiftkit.errors import ShiftkitError
from shiftkit.models import weights
from shiftkit.train import fit

from test_data_files import _celeba, _waterbirds

#: sha256 of ``"\n".join(f"{key} {list(shape)}")`` over the state dict of torchvision 0.29.1's own
#: ``resnet18/34/50(num_classes=1000)``, and their parameter counts.
FINGERPRINTS = {
    "resnet18": "66b04efc1dfd4b8081ba80fd7b23ab4d63039fdd0a7f5cef3c8bd7aea780b487",
    "resnet34": "4aa3e2bbbdc5e2fdb7bfcf1e886271e8e822af6b754d4023a9ab60bf1453a693",
    "resnet50": "614cd53ddf84966979ca9f6b3cf723cba0ad398675e7d0db3550943789819c17",
}
PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
CPU = ["device=cpu"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Caches and torch's hub folder inside the test's folder; no data root from the environment; the
    runner's in-process data cache starts empty."""
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SHIFTKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "_DATA_CACHE", {})


# ---------------------------------------------------------------------------------------------- helpers


def _source(name="resnet18", width=8, channels=3, classes=1000, seed=0):
    """A model with random weights everywhere, BatchNorm statistics and affine parameters included (a
    fresh build has BN weight 1, bias 0, mean 0, var 1: equal to any other fresh build), in eval mode."""
    torch.manual_seed(seed)
    net = models.build(name, input_shape=(channels, 16, 16), num_classes=classes, width=width)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return net.eval()


def _state(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _save(state: dict, path: Path, fmt: str = "torch") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _file(tmp_path, name="resnet18", width=8, fmt="torch", seed=0, file=None, **kw) -> Path:
    """A weight file of a random ``name`` (3 channels, 1000 classes unless given)."""
    suffix = ".pth" if fmt == "torch" else ".safetensors"
    path = tmp_path / "weights" / (file or f"{name}-w{width}-s{seed}{suffix}")
    return _save(_state(_source(name, width, seed=seed, **kw)), path, fmt)


def _assert_same(state: dict, net: nn.Module, skip=()) -> None:
    own = net.state_dict()
    keys = [k for k in own if not any(k == s or k.startswith(s + ".") for s in skip)]
    assert keys, "nothing compared"
    for key in keys:
        assert torch.equal(own[key], state[key]), key


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cli(capsys, *args):
    """``shiftkit train ARGS`` in-process: (exit status, stdout, stderr)."""
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _runs(out: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("run.json"))]


def _one_run(out: Path) -> dict:
    (record,) = _runs(out)
    assert record["status"] == "finished"
    assert (Path(record["run_dir"]) / "done").exists()
    return record


def _one_line_error(code, out, err, *parts) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("shiftkit: error: "), err
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


X16 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(7))


# ----------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_layout_is_torchvisions(name):
    with torch.device("meta"):
        net = models.build(name, input_shape=(3, 224, 224), num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[name]
    lines = "\n".join(f"{key} {list(value.shape)}" for key, value in net.state_dict().items())
    assert hashlib.sha256(lines.encode()).hexdigest() == FINGERPRINTS[name]
    assert [n for n, _ in net.named_children()] == CHILDREN and weights.head_name(net) == "fc"
    first = net.layer2[0]  # ResNet v1.5: the stride on the first 3x3 convolution of the block
    assert isinstance(first.downsample, nn.Sequential) and first.downsample[0].stride == (2, 2)
    assert isinstance(first.downsample[1], nn.BatchNorm2d)
    if name == "resnet50":
        assert (first.conv1.stride, first.conv2.stride, first.conv3.stride) == ((1, 1), (2, 2), (1, 1))
        assert first.conv2.kernel_size == (3, 3) and first.conv1.kernel_size == (1, 1)
        assert net.layer1[0].downsample is not None and net.layer1[0].downsample[0].stride == (1, 1)
        assert net.fc.in_features == 2048
    else:
        assert (first.conv1.stride, first.conv2.stride) == ((2, 2), (1, 1))
        assert net.layer1[0].downsample is None
        assert net.fc.in_features == 512
    assert net.layer2[1].downsample is None
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding) == (3, 2, 1)


def test_width_and_channels_scale_the_layout():
    net = models.build("resnet18", input_shape=(1, 16, 16), num_classes=3, width=4)
    assert net.conv1.weight.shape == (4, 1, 7, 7) and net.fc.weight.shape == (3, 32)
    assert models.build("resnet50", input_shape=(3, 16, 16), num_classes=2, width=4).fc.in_features == 128


# -------------------------------------------------------------------------------------- strict loading


def _wrapped(state):
    return {"state_dict": state, "epoch": 3}


def _prefixed(state):
    return {f"module.{k}": v for k, v in state.items()}


@pytest.mark.parametrize(
    "fmt, wrap, file",
    [
        ("torch", None, "w.pth"),
        ("safetensors", None, "w.safetensors"),
        ("torch", _wrapped, "checkpoint.pt"),
        ("torch", lambda s: {"model": s}, "model.pt"),
        ("torch", _prefixed, "ddp.pth"),
        ("safetensors", None, "named-like-torch.pth"),  # recognized by its contents, not its name
        ("torch", None, "named-like.safetensors"),
    ],
    ids=["torch", "safetensors", "state_dict-wrapper", "model-wrapper", "module-prefix",
         "safetensors-as-pth", "torch-as-safetensors"],
)
def test_strict_loading_gives_every_tensor_and_the_same_outputs(tmp_path, fmt, wrap, file):
    src = _source("resnet18", 8)
    state = _state(src)
    stored = (wrap or (lambda s: s))(state)
    if fmt == "torch":
        path = tmp_path / file
        torch.save(stored, path)
    else:
        path = _save(stored, tmp_path / file, "safetensors")
    net = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8, weights=str(path))
    _assert_same(state, net)
    assert set(net.state_dict()) == set(state)
    with torch.no_grad():
        expected = src(X16)
        assert torch.equal(net.eval()(X16), expected)
        fresh = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8).eval()
        assert not torch.allclose(fresh(X16), expected)  # the comparison can fail
    info = net.weights_info
    assert info["head"] == "loaded" and info["input_channels_summed"] is False
    assert info["sha256"] == _sha(path) and info["file"] == str(path.resolve())


def test_read_returns_the_state_dict_on_the_cpu(tmp_path):
    state = _state(_source("resnet18", 4))
    for path in (_save(state, tmp_path / "a.pth"), _save(state, tmp_path / "a.safetensors", "safetensors")):
        read = weights.read(path)
        assert list(read) == list(state) if path.suffix == ".pth" else set(read) == set(state)
        assert all(torch.equal(read[k], state[k]) and read[k].device.type == "cpu" for k in state)


def test_a_file_without_num_batches_tracked_loads_as_torch_strict_loading_does(tmp_path):
    # torchvision's V1 files were saved before BatchNorm had ``num_batches_tracked`` (PyTorch 0.4.1);
    # torch's own ``load_state_dict(strict=True)`` accepts them (BatchNorm fills the counter in).
    src = _source("resnet18", 8)
    state = {k: v for k, v in _state(src).items() if not k.endswith("num_batches_tracked")}
    path = _save(state, tmp_path / "old.pth")
    reference = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8)
    reference.load_state_dict(torch.load(path, weights_only=True), strict=True)  # torch accepts it
    net = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8, weights=str(path))
    _assert_same(state, net, skip=[k for k in net.state_dict() if k.endswith("num_batches_tracked")])
    with torch.no_grad():
        assert torch.equal(net.eval()(X16), src(X16))


# ----------------------------------------------------------------------------------------- head, stem


def test_a_head_of_another_shape_is_the_models_own_fresh_one(tmp_path):
    state = _state(_source("resnet18", 8))
    path = _save(state, tmp_path / "w1000.pth")
    torch.manual_seed(11)
    net = models.build("resnet18", input_shape=(3, 16, 16), num_classes=2, width=8, weights=str(path))
    torch.manual_seed(11)
    fresh = models.build("resnet18", input_shape=(3, 16, 16), num_classes=2, width=8)
    _assert_same(state, net, skip=["fc"])
    assert net.fc.weight.shape == (2, 64) and net.fc.bias.shape == (2,)
    assert torch.equal(net.fc.weight, fresh.fc.weight) and torch.equal(net.fc.bias, fresh.fc.bias)
    assert not torch.equal(net.conv1.weight, fresh.conv1.weight)  # the backbone did come from the file
    assert net.weights_info["head"] == "replaced"

    headless = _save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "headless.pth")
    torch.manual_seed(12)
    net = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8, weights=str(headless))
    torch.manual_seed(12)
    fresh = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8)
    _assert_same(state, net, skip=["fc"])
    assert torch.equal(net.fc.weight, fresh.fc.weight) and not torch.equal(net.fc.weight, state["fc.weight"])
    assert net.weights_info["head"] == "new"


def test_a_three_channel_stem_sums_into_a_one_channel_model(tmp_path):
    state = _state(_source("resnet18", 8))
    path = _save(state, tmp_path / "rgb.safetensors", "safetensors")
    net = models.build("resnet18", input_shape=(1, 16, 16), num_classes=1000, width=8, weights=str(path))
    assert net.conv1.weight.shape == (8, 1, 7, 7)
    torch.testing.assert_close(net.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True), rtol=0, atol=0)
    _assert_same(state, net, skip=["conv1"])
    assert net.weights_info["input_channels_summed"] is True
    gray = X16[:, :1]  # a gray image is the same as its three equal channels for the RGB model
    src = _source("resnet18", 8)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(gray), src(gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ Hugging Face names


def _to_hugging_face(key: str) -> str:
    """torchvision's ResNet name -> Hugging Face's ``ResNetForImageClassification`` name."""
    import re

    if key.startswith("conv1."):
        return "resnet.embedder.embedder.convolution." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "resnet.embedder.embedder.normalization." + key[len("bn1."):]
    if key.startswith("fc."):
        return "classifier.1." + key[len("fc."):]
    match = re.match(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.*)", key)
    if match:
        s, b, kind, i, rest = match.groups()
        part = "convolution" if kind == "conv" else "normalization"
        return f"resnet.encoder.stages.{int(s) - 1}.layers.{b}.layer.{int(i) - 1}.{part}.{rest}"
    match = re.match(r"layer(\d)\.(\d+)\.downsample\.([01])\.(.*)", key)
    if match:
        s, b, j, rest = match.groups()
        part = "convolution" if j == "0" else "normalization"
        return f"resnet.encoder.stages.{int(s) - 1}.layers.{b}.shortcut.{part}.{rest}"
    raise AssertionError(f"unmapped key {key}")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_hugging_face_names_load_as_torchvisions(tmp_path, name):
    src = _source(name, 4)
    state = _state(src)
    renamed = {_to_hugging_face(k): v for k, v in state.items()}
    assert "resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var" in renamed
    assert not set(renamed) & set(state)
    assert weights.from_hugging_face(renamed).keys() == state.keys()
    path = _save(renamed, tmp_path / "model.safetensors", "safetensors")
    net = models.build(name, input_shape=(3, 16, 16), num_classes=1000, width=4, weights=str(path))
    _assert_same(state, net)
    with torch.no_grad():
        assert torch.equal(net.eval()(X16), src(X16))


# ----------------------------------------------------------------------------------- save, then load


def test_outputs_survive_a_save_and_load_with_trained_batchnorm_statistics(tmp_path):
    torch.manual_seed(3)
    net = models.build("resnet34", input_shape=(3, 16, 16), num_classes=5, width=4)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # real running statistics, from forward passes in training mode
            net(torch.randn(8, 3, 16, 16) * 2 + 1)
    assert not torch.equal(net.bn1.running_mean, torch.zeros_like(net.bn1.running_mean))
    net.eval()
    path = _save(_state(net), tmp_path / "trained.pth")
    torch.manual_seed(4)
    loaded = models.build("resnet34", input_shape=(3, 16, 16), num_classes=5, width=4, weights=str(path)).eval()
    torch.manual_seed(4)
    fresh = models.build("resnet34", input_shape=(3, 16, 16), num_classes=5, width=4).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X16), net(X16))
        assert not torch.allclose(fresh(X16), net(X16))
    assert int(loaded.bn1.num_batches_tracked) == 3


# -------------------------------------------------------------------------------------- frozen backbone


def _digits_resnet(path, freeze, seed=0):
    torch.manual_seed(seed)
    return models.build("resnet18", input_shape=(1, 8, 8), num_classes=2, width=4, weights=str(path), freeze=freeze)


def _fit(net, splits):
    stats = splits.statistics()
    return fit(net, splits, losses.build("ce", **stats), weighting.build("erm", **stats),
               optim.build("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3), epochs=2, batch_size=32, seed=0)


def test_freeze_backbone_trains_the_head_only_and_keeps_batchnorm_statistics(tmp_path):
    state = _state(_source("resnet18", 4))
    path = _save(state, tmp_path / "rgb1000.pth")
    expected = dict(state, **{"conv1.weight": state["conv1.weight"].sum(dim=1, keepdim=True)})
    splits = data.build("digits_binary")
    net = _digits_resnet(path, "backbone")
    head_before = _state(net.fc)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    net.train()
    assert net.training and net.fc.training
    batchnorms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) == 20 and not any(m.training for m in batchnorms)
    assert all(isinstance(m, weights.FrozenBatchNorm) and type(m).__name__ == "FrozenBatchNorm2d" for m in batchnorms)
    result = _fit(net, splits)
    assert result.steps > 0
    _assert_same(expected, net, skip=["fc"])  # parameters, running_mean/var and num_batches_tracked alike
    assert not torch.equal(net.fc.weight, head_before["weight"]) and not torch.equal(net.fc.bias, head_before["bias"])
    net.train()
    assert not any(m.training for m in batchnorms)

    control = _digits_resnet(path, "none")  # without freezing, the same loop moves them: the check above can fail
    _fit(control, splits)
    assert not torch.equal(control.bn1.running_mean, expected["bn1.running_mean"])
    assert not torch.equal(control.layer1[0].conv1.weight, expected["layer1.0.conv1.weight"])


def test_a_frozen_model_deep_copies_with_its_classes(tmp_path):
    path = _file(tmp_path, width=4)
    net = _digits_resnet(path, "backbone")
    twin = copy.deepcopy(net)
    assert type(twin.bn1).__name__ == "FrozenBatchNorm2d" and type(twin.bn1) is type(net.bn1)
    assert isinstance(twin.layer1[0].bn2, nn.BatchNorm2d) and isinstance(twin.layer1[0].bn2, weights.FrozenBatchNorm)
    twin.train()
    assert not twin.bn1.training and twin.fc.training and not twin.conv1.weight.requires_grad
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), net.eval()(x))


def test_a_frozen_model_pickles(tmp_path):
    path = _file(tmp_path, width=4)
    net = _digits_resnet(path, "backbone")
    again = pickle.loads(pickle.dumps(net))
    assert type(again.bn1).__name__ == "FrozenBatchNorm2d" and isinstance(again.bn1, weights.FrozenBatchNorm)
    again.train()
    assert not again.bn1.training
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net.eval()(x))


def test_freeze_backbone_of_an_mlp_trains_its_last_layer():
    net = models.build("mlp", input_shape=(1, 8, 8), num_classes=2, width=8, depth=2, freeze="backbone")
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["5.weight", "5.bias"]
    with pytest.raises(ShiftkitError, match="model.freeze must be one of none, backbone, got 'head'"):
        models.build("mlp", input_shape=(1, 8, 8), num_classes=2, width=8, freeze="head")


# ------------------------------------------------------------------------------------------ features


def _feature_files(tmp_path) -> list:
    return sorted((tmp_path / "cache" / "features").glob("*.npy"))


def _counting(monkeypatch) -> list:
    calls = []
    real = features._extract

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_extract", counted)
    return calls


def _refuse(*args, **kwargs):
    raise AssertionError("features extracted again instead of read from the cache")


def test_features_are_the_backbones_and_are_cached_by_everything_they_depend_on(tmp_path, monkeypatch):
    path = _file(tmp_path, width=4)
    opts = {"width": 4}
    calls = _counting(monkeypatch)
    splits = data.build("digits_binary", features_from="resnet18", features_options=opts, features_weights=str(path))
    net = models.build("resnet18", input_shape=(1, 8, 8), num_classes=2, width=4, weights=str(path))
    assert splits.input_shape == (net.fc.in_features,) == (32,)
    raw = data.build("digits_binary")
    backbone, head = weights.split_head(net)
    assert head is net.fc and weights.head_name(net) == "fc" and isinstance(net.fc, nn.Linear)  # net untouched
    backbone.eval()
    with torch.no_grad():
        for made, split in ((splits.train, raw.train), (splits.val, raw.val), (splits.test, raw.test)):
            torch.testing.assert_close(made.x, backbone(raw.pipeline(split.x, train=False)), rtol=1e-5, atol=1e-6)
            assert torch.equal(made.y, split.y) and torch.equal(made.g, split.g)
            assert made.x.dtype == torch.float32
        torch.testing.assert_close(net.fc(backbone(raw.pipeline(raw.val.x))), net(raw.pipeline(raw.val.x)))
    assert splits.pipeline.mean is None and not splits.pipeline.augments
    info = splits.info["features"]
    assert info["features_from"] == "resnet18" and info["dim"] == 32 and info["weights"] == _sha(path)
    assert info["options"] == opts and info["weights_file"] == str(path.resolve())
    assert len(calls) == 3
    files = _feature_files(tmp_path)
    assert len(files) == 3

    with monkeypatch.context() as m:  # a second build reads the files
        m.setattr(features, "_extract", _refuse)
        again = data.build("digits_binary", features_from="resnet18", features_options=opts,
                           features_weights=str(path))
    assert torch.equal(again.train.x, splits.train.x) and torch.equal(again.test.x, splits.test.x)

    data.build("digits_binary", features_from="resnet18", features_options={**opts, "zero_init_residual": True},
               features_weights=str(path))  # another option: new files
    assert len(calls) == 6 and len(_feature_files(tmp_path)) == 6
    data.build("digits_binary", split_seed=1, features_from="resnet18", features_options=opts,
               features_weights=str(path))  # other inputs: new files
    assert len(calls) == 9 and len(_feature_files(tmp_path)) == 9
    _file(tmp_path, width=4, seed=5, file=path.name)  # other weights in the same file: new files
    changed = data.build("digits_binary", features_from="resnet18", features_options=opts,
                         features_weights=str(path))
    assert len(calls) == 12 and len(_feature_files(tmp_path)) == 12
    assert not torch.allclose(changed.train.x, splits.train.x)
    assert changed.info["features"]["weights"] == _sha(path) != info["weights"]


def test_a_damaged_feature_file_is_recomputed(tmp_path, monkeypatch):
    path = _file(tmp_path, width=4)
    build = lambda: data.build("digits_binary", features_from="resnet18", features_options={"width": 4},  # noqa: E731
                               features_weights=str(path))
    first = build()
    files = _feature_files(tmp_path)
    assert len(files) == 3
    sizes = {f: f.stat().st_size for f in files}

    def rebuilt_once() -> None:
        with monkeypatch.context() as m:
            calls = _counting(m)
            again = build()
        assert len(calls) == 1
        for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
            assert torch.equal(a.x, b.x)

    for damaged in files:  # every split's file in turn: the build rereads the others and recomputes it
        damaged.write_bytes(damaged.read_bytes()[: sizes[damaged] // 2])
        rebuilt_once()
        assert damaged.stat().st_size == sizes[damaged] and np.load(damaged).shape[1] == 32
    files[0].write_bytes(b"not a numpy file at all")  # garbage of any kind
    rebuilt_once()
    assert _feature_files(tmp_path) == files and all(f.stat().st_size == sizes[f] for f in files)


def test_feature_options_without_a_backbone_are_one_line_errors(tmp_path):
    path = _file(tmp_path, width=4)
    for kwargs in ({"features_weights": str(path)}, {"features_options": {"width": 4}}):
        with pytest.raises(ShiftkitError) as err:
            data.build("digits_binary", **kwargs)
        assert "\n" not in str(err.value)
        assert "data.features_weights and data.features_options need data.features_from=<backbone>" in str(err.value)


def test_cli_trains_a_linear_probe_on_cached_features(tmp_path, capsys):
    path = _file(tmp_path, width=4)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "data.features_from=resnet18", f"data.features_weights={path}",
                        "+data.features_options.width=4", "model=linear", "train.epochs=2", f"out={out}", *CPU)
    assert code == 0, err
    record = _one_run(out)
    feats = record["data"]["info"]["features"]
    assert feats["features_from"] == "resnet18" and feats["dim"] == 32 and feats["weights"] == _sha(path)
    assert feats["options"] == {"width": 4}
    assert record["config"]["model"]["name"] == "linear"
    assert record["config"]["data"]["features_options"] == {"width": 4}
    assert len(_feature_files(tmp_path)) == 3


# ------------------------------------------------------------------------------------------ identities


def _plain(*overrides):
    return OmegaConf.to_container(compose([*overrides, "out=r"]), resolve=True)


def test_run_identities_hold_the_weight_files_sha256_not_its_path(tmp_path):
    path = _file(tmp_path, width=4)
    copy_ = tmp_path / "elsewhere" / "moved.pth"
    copy_.parent.mkdir()
    shutil.copyfile(path, copy_)
    model = ["model=resnet18", "model.width=4"]
    first = runner.config_hash(_plain(*model, f"model.weights={path}"))
    assert runner.config_hash(_plain(*model, f"model.weights={copy_}")) == first  # a moved file: the same run
    assert runner.config_hash(_plain(*model)) != first
    feats = ["data.features_from=resnet18", "+data.features_options.width=4"]
    probe = runner.config_hash(_plain(*feats, f"data.features_weights={path}"))
    assert runner.config_hash(_plain(*feats, f"data.features_weights={copy_}")) == probe
    _file(tmp_path, width=4, seed=9, file=path.name)  # the same path, other bytes: another run
    assert runner.config_hash(_plain(*model, f"model.weights={path}")) != first
    assert runner.config_hash(_plain(*feats, f"data.features_weights={path}")) != probe
    assert runner.config_hash(_plain(*model, f"model.weights={copy_}")) == first


def test_run_json_records_the_weight_file(tmp_path, capsys):
    path = _file(tmp_path, width=4)
    out = tmp_path / "out"
    code, stdout, err = _cli(capsys, "model=resnet18", "model.width=4", f"model.weights={path}", "train.epochs=1",
                             "train.batch_size=64", f"out={out}", *CPU)
    assert code == 0, err
    record = _one_run(out)
    assert record["model_weights"] == {"file": str(path.resolve()), "sha256": _sha(path)}
    assert record["config"]["model"]["weights"] == str(path)
    assert record["run_dir"] in stdout


# ------------------------------------------------------------------------------------ one-line refusals


class _Payload:
    """Unpickled, it would create ``marker``: what a malicious pickle does (e.g. ``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_plant, (self.marker,))


def _plant(marker):
    Path(marker).write_text("pwned")
    return marker


def _truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def _bad_file(kind: str, tmp_path: Path) -> tuple:
    """(model.weights value, extra overrides, fragments of the message) for one kind of bad file."""
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    if kind == "missing":
        return str(bad / "absent.pth"), [], ["no such file", "absent.pth"]
    if kind == "folder":
        return str(bad), [], ["a folder"]
    if kind == "empty":
        (bad / "empty.pth").write_bytes(b"")
        return str(bad / "empty.pth"), [], ["is empty or truncated (0 bytes)"]
    if kind == "truncated-torch":
        path = _truncated(_file(tmp_path, width=4), bad / "cut.pth")
        return str(path), [], ["cut.pth is not a readable weight file (damaged or truncated?)"]
    if kind == "truncated-safetensors":
        path = _truncated(_file(tmp_path, width=4, fmt="safetensors"), bad / "cut.safetensors")
        return str(path), [], ["cut.safetensors is not a readable weight file (damaged or truncated?)"]
    if kind == "code":
        torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(tmp_path / "marker")}, bad / "evil.pth")
        return str(bad / "evil.pth"), [], ["is a pickle holding more than tensors", "does not load it"]
    if kind == "architecture":
        return str(_file(tmp_path, "resnet50", width=4)), [], ["does not fit model 'resnet18'", "unexpected"]
    if kind == "width":
        return str(_file(tmp_path, width=8)), [], ["does not fit model 'resnet18'", "of another shape"]
    if kind == "not-a-state-dict":
        torch.save([torch.zeros(2)], bad / "list.pth")
        return str(bad / "list.pth"), [], ["holds no state dict"]
    raise AssertionError(kind)


BAD_FILES = ["missing", "folder", "empty", "truncated-torch", "truncated-safetensors", "code", "architecture",
             "width", "not-a-state-dict"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_weight_files_are_one_line_errors(tmp_path, capsys, kind):
    spec, extra, parts = _bad_file(kind, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = _cli(capsys, "model=resnet18", "model.width=4", f"model.weights={spec}", *extra,
                             "train.epochs=1", f"out={out}", *CPU)
    line = _one_line_error(code, stdout, err, f"model.weights: {spec}" if kind not in ("missing", "folder")
                           else f"model.weights={spec}", *parts)
    assert stdout == "" and not out.exists(), line
    if kind == "code":
        marker = tmp_path / "marker"
        assert not marker.exists(), "the pickle's code ran"
        torch.load(Path(spec), weights_only=False)  # the payload is live: an unsafe load runs it
        assert marker.read_text() == "pwned"


def test_bad_feature_weights_are_one_line_errors(tmp_path, capsys):
    spec, _, _ = _bad_file("truncated-torch", tmp_path)
    code, stdout, err = _cli(capsys, "data.features_from=resnet18", f"data.features_weights={spec}",
                             "+data.features_options.width=4", "model=linear", "train.epochs=1",
                             f"out={tmp_path / 'out'}", *CPU)
    _one_line_error(code, stdout, err, "cut.pth", "not a readable weight file")
    code, stdout, err = _cli(capsys, f"data.features_weights={spec}", "model=linear", f"out={tmp_path / 'out'}", *CPU)
    _one_line_error(code, stdout, err, "data.features_weights and data.features_options need data.features_from")
    assert not (tmp_path / "out").exists()


def test_imagenet_weights_exist_for_the_three_resnets_only(tmp_path, capsys):
    code, stdout, err = _cli(capsys, "model=cnn", "model.weights=imagenet", f"out={tmp_path / 'out'}", *CPU)
    _one_line_error(code, stdout, err, "model.weights=imagenet", "resnet18, resnet34, resnet50", "not model 'cnn'")


def test_imagenet_weights_without_the_file_or_torchvision_say_what_to_fetch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "torchvision.models", raising=False)
    code, stdout, err = _cli(capsys, "model=resnet18", "model.weights=imagenet", f"out={tmp_path / 'out'}", *CPU)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert weights.hub_checkpoints() == hub
    _one_line_error(code, stdout, err, "resnet18-f37072fd.pth", str(hub),
                    "https://download.pytorch.org/models/resnet18-f37072fd.pth")
    assert not (tmp_path / "out").exists()


def test_an_unknown_freeze_is_a_one_line_error(tmp_path, capsys):
    code, stdout, err = _cli(capsys, "model.freeze=head", f"out={tmp_path / 'out'}", *CPU)
    _one_line_error(code, stdout, err, "model.freeze must be one of none, backbone, got 'head'")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- model.weights=imagenet


def test_imagenet_weights_are_read_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "IMAGENET_FILES", {**weights.IMAGENET_FILES, "resnet18": "tiny-resnet18.pth"})
    monkeypatch.setitem(sys.modules, "torchvision", None)  # never asked: the file is there
    state = _state(_source("resnet18", 8))
    path = _save(state, tmp_path / "torch" / "hub" / "checkpoints" / "tiny-resnet18.pth")
    net = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8, weights="imagenet")
    _assert_same(state, net)
    assert net.weights_info["file"] == str(path.resolve()) and net.weights_info["sha256"] == _sha(path)
    assert weights.identity("resnet18", "imagenet") == f"sha256:{_sha(path)}"


def _fake_torchvision(monkeypatch, state, write=True):
    calls = []

    class Weights:
        def __init__(self, name):
            self.name = name

        def get_state_dict(self, progress=True, check_hash=False):
            calls.append((self.name, progress, check_hash))
            if write:
                target = weights.hub_checkpoints() / weights.IMAGENET_FILES[self.name.split("_")[0].lower()]
                _save(state, target)
            return state

    package = types.ModuleType("torchvision")
    package.models = types.ModuleType("torchvision.models")
    package.models.get_weight = Weights
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", package.models)
    return calls


def test_imagenet_weights_are_fetched_through_torchvision(tmp_path, monkeypatch):
    state = _state(_source("resnet18", 8))
    calls = _fake_torchvision(monkeypatch, state)
    net = models.build("resnet18", input_shape=(3, 16, 16), num_classes=1000, width=8, weights="imagenet")
    assert calls == [("ResNet18_Weights.IMAGENET1K_V1", True, True)]
    _assert_same(state, net)
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    models.build("resnet18", input_shape=(3, 16, 16), num_classes=2, width=8, weights="imagenet")
    assert len(calls) == 1  # the second build finds the file


def test_imagenet_weights_that_torchvision_does_not_leave_are_an_error(tmp_path, monkeypatch):
    calls = _fake_torchvision(monkeypatch, _state(_source("resnet50", 4)), write=False)
    with pytest.raises(ShiftkitError) as err:
        models.build("resnet50", input_shape=(3, 16, 16), num_classes=2, width=4, weights="imagenet")
    assert calls == [("ResNet50_Weights.IMAGENET1K_V1", True, True)]
    assert "torchvision did not leave resnet50-0676ba61.pth" in str(err.value) and "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------- end to end


def test_waterbirds_fine_tunes_a_frozen_pretrained_resnet18(tmp_path, capsys):
    root = _waterbirds(tmp_path / "wb")
    path = _file(tmp_path, width=4)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "data=waterbirds", f"data.root={root}", "data.image_size=32", "model=resnet18",
                        "model.width=4", f"model.weights={path}", "model.freeze=backbone", "train.epochs=1",
                        f"out={out}", *CPU)
    assert code == 0, err
    record = _one_run(out)
    assert record["model_weights"] == {"file": str(path.resolve()), "sha256": _sha(path)}
    assert record["config"]["model"]["freeze"] == "backbone" and record["data"]["name"] == "waterbirds"
    assert record["data"]["counts"]["train"]["group_counts"] == [3, 1, 1, 2]
    assert 0.0 <= record["final"]["test"]["acc"] <= 1.0


def test_the_celeba_preset_fine_tunes_a_pretrained_resnet50(tmp_path, capsys):
    root = _celeba(tmp_path / "celeba", "csv")
    path = _file(tmp_path, "resnet50", width=4)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "experiment=wang_celeba_ce", f"data.root={root}", "data.image_size=32",
                        "data.test_per_group=2", "data.train_fraction=1", "model.width=4", f"model.weights={path}",
                        "train.epochs=1", f"out={out}", *CPU)
    assert code == 0, err
    record = _one_run(out)
    assert record["config"]["model"]["name"] == "resnet50" and record["config"]["data"]["name"] == "celeba"
    assert record["method"] == "CE" and record["model_weights"]["sha256"] == _sha(path)
    assert record["data"]["counts"]["test"]["group_counts"] == [2, 2, 2, 2]
    assert record["data"]["counts"]["train"]["group_counts"] == [4, 4, 4, 4]


def test_the_celeba_preset_asks_for_torchvisions_imagenet_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    root = _celeba(tmp_path / "celeba", "csv")
    code, stdout, err = _cli(capsys, "experiment=wang_celeba_ce", f"data.root={root}", "data.image_size=16",
                             "data.test_per_group=2", "data.train_fraction=1", "model.width=4",
                             f"out={tmp_path / 'out'}", *CPU)
    _one_line_error(code, stdout, err, "model.weights=imagenet needs resnet50-0676ba61.pth")


def test_the_ab_waterbirds_preset_trains_a_linear_model_on_features(tmp_path, capsys):
    root = _waterbirds(tmp_path / "wb")
    path = _file(tmp_path, width=4)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "experiment=ab_waterbirds", f"data.root={root}", "data.image_size=32",
                        f"data.features_weights={path}", "+data.features_options.width=4", "train.epochs=2",
                        f"out={out}", *CPU)
    assert code == 0, err
    record = _one_run(out)
    config = record["config"]
    assert config["model"]["name"] == "linear" and config["data"]["split"] == "autobalance"
    assert config["data"]["features_from"] == "resnet18"
    feats = record["data"]["info"]["features"]
    assert feats["dim"] == 32 and feats["weights"] == _sha(path) and feats["features_from"] == "resnet18"
    assert record["data"]["pipeline"]["mean"] is None  # the linear model sees the features, not images
    assert record["data"]["counts"]["train"]["group_counts"] == [2, 1, 1, 1]  # [AB]'s halves of [3, 1, 1, 2]
    assert len(_feature_files(tmp_path)) == 3


# ------------------------------------------------------------------------------------------------ ensemble


def test_an_ensemble_of_frozen_models_runs_its_seeds_one_by_one(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "-m", "seed=0,1", "ensemble=true", "model=mlp", "model.width=8", "model.depth=1",
                 "model.freeze=backbone", "train.epochs=1", f"out={out}", *CPU])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "frozen ones; running the seeds one by one" in err
    records = _runs(out)
    assert sorted(r["config"]["seed"] for r in records) == [0, 1]
    assert all(r["status"] == "finished" and "ensemble_size" not in r for r in records)
    assert all((Path(r["run_dir"]) / "done").exists() for r in records)
