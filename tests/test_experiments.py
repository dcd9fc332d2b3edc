"""Every experiment preset of conf/experiment/ composes and runs end to end at a tiny size."""

import json

import pytest

from shiftkit.config import compose, experiments
from shiftkit.runner import run

TINY = ["train.epochs=2", "train.eval_every=1", "model.width=8", "model.depth=1", "device=cpu"]


@pytest.mark.parametrize("name", experiments())
def test_experiment_runs_end_to_end(name, tmp_path):
    cfg = compose([f"experiment={name}", f"out={tmp_path}", *TINY])
    if cfg.search.objective == "deo_mix":  # DEO needs an attribute: groups g = 2y + a
        cfg = compose([f"experiment={name}", f"out={tmp_path}", "data=fmnist_spurious", *TINY])
    assert cfg.name  # each preset labels its runs as the paper does
    record = run(cfg)
    assert (tmp_path / cfg.data.name).exists()
    assert record["config"]["train"]["epochs"] == 2  # the command line overrides the preset
    assert json.loads(json.dumps(record))["selected"]["test"]["balanced_acc"] is not None


def test_presets_carry_the_papers_settings():  # SPEC §8.1
    cfg = compose(["experiment=wang_fig5_poly_iw"])
    assert (cfg.loss.name, cfg.loss.alpha, cfg.weighting.name, cfg.weighting.exponent) == ("poly", 2.0, "iw", 3.0)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs, cfg.train.batch_size) == (0.08, 0.0, 600, 64)
    es = compose(["experiment=wang_ce_iw_exp_es"])
    assert es.train.select == "best:group_balanced_acc" and es.weighting.exponent == 1.5 and es.optim.lr == 8e-3
    dro = compose(["experiment=wang_group_poly_dro"])
    assert (dro.weighting.name, dro.weighting.eta, dro.optim.lr, dro.train.epochs) == ("group_dro", 0.05, 1e-3, 200)
