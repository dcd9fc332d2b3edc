"""Every experiment preset of conf/experiment/ composes and runs end to end at a tiny size."""

import json

import pytest
import torch

from shiftkit import models
from shiftkit.config import compose, experiments
from shiftkit.runner import run
from test_data_files import _celeba, _waterbirds

TINY = ["train.epochs=2", "train.eval_every=1", "model.width=8", "model.depth=1", "device=cpu"]
#: Presets for a user's dataset (and pretrained weights) run on fixture files in those formats.
USER_DATA = ("celeba", "waterbirds")
_USERS = {name: compose([f"experiment={name}"]) for name in experiments()}
ON_USER_DATA = [n for n, cfg in _USERS.items() if cfg.data.name in USER_DATA]


@pytest.mark.parametrize("name", [n for n in experiments() if n not in ON_USER_DATA])
def test_experiment_runs_end_to_end(name, tmp_path):
    cfg = compose([f"experiment={name}", f"out={tmp_path}", *TINY])
    if cfg.procedure.get("objective") == "deo_mix":  # DEO needs an attribute: groups g = 2y + a
        cfg = compose([f"experiment={name}", f"out={tmp_path}", "data=fmnist_spurious", *TINY])
    assert cfg.name  # each preset labels its runs as the paper does
    record = run(cfg)
    assert (tmp_path / cfg.data.name).exists()
    assert record["config"]["train"]["epochs"] == 2  # the command line overrides the preset
    assert json.loads(json.dumps(record))["selected"]["test"]["balanced_acc"] is not None


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Width-4 ImageNet-layout weights (3 channels, 1000 classes), one file per architecture."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        net = models.build(arch, input_shape=(3, 16, 16), num_classes=1000, width=4)
        files[arch] = folder / f"{arch}.pth"
        torch.save(net.state_dict(), files[arch])
    return files


@pytest.mark.parametrize("name", ON_USER_DATA)
def test_user_data_presets_run_on_fixture_files(name, tmp_path, weight_files, monkeypatch):
    """docs/PRETRAINED.md's presets, on CelebA / Waterbirds fixture files in the standard formats, with small
    weights in place of ImageNet's."""
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    cfg = _USERS[name]
    common = [f"experiment={name}", f"out={tmp_path}", "data.image_size=16", "train.epochs=2", "train.eval_every=1",
              "device=cpu"]
    if cfg.data.name == "celeba":
        root = _celeba(tmp_path / "celeba", "csv")
        extra = ["data.test_per_group=2", "data.train_fraction=1", "model.width=4",
                 f"model.weights={weight_files[cfg.model.name]}"]
    else:
        root = _waterbirds(tmp_path / "waterbirds")
        extra = [f"data.features_weights={weight_files[cfg.data.features_from]}", "+data.features_options.width=4"]
        if cfg.procedure.name == "autobalance":
            extra += ["search.start_epoch=1", "search.every=1", "search.batches=1", "search.retrain_epochs=1"]
    record = run(compose([*common, f"data.root={root}", *extra]))
    assert record["status"] == "finished" and record["config"]["data"]["name"] == cfg.data.name
    assert record["config"]["train"]["epochs"] == 2
    assert record["final"]["test"]["group_balanced_acc"] is not None


def test_presets_carry_the_papers_settings():  # docs/METHODS.md#protocol-wang2022
    cfg = compose(["experiment=wang_fig5_poly_iw"])
    assert (cfg.loss.name, cfg.loss.alpha, cfg.weighting.name, cfg.weighting.exponent) == ("poly", 2.0, "iw", 3.0)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs, cfg.train.batch_size) == (0.08, 0.0, 600, 64)
    es = compose(["experiment=wang_ce_iw_exp_es"])
    assert es.train.select == "best:group_balanced_acc" and es.weighting.exponent == 1.5 and es.optim.lr == 8e-3
    dro = compose(["experiment=wang_group_poly_dro"])
    assert (dro.weighting.name, dro.weighting.eta, dro.optim.lr, dro.train.epochs) == ("group_dro", 0.05, 1e-3, 200)
