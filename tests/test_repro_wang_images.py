"""[W]'s image reproductions (wang2022-fig3/4/5): the runs they train and how Figures 3 and 4 share them
(docs/METHODS.md#selection-best, docs/METHODS.md#protocol-wang2022, docs/METHODS.md#headline-wang2022)."""

import json

from shiftkit import reproductions
from shiftkit.config import compose
from shiftkit.reproductions import wang2022_protocol as protocol


def test_runs_are_the_papers_presets_with_scaled_epochs():
    settings = reproductions.REPRODUCTIONS.get("wang2022-fig3").scales["quick"]
    lists = protocol.overrides("wang_ce_iw_exp_es", settings)
    assert len(lists) == settings["seeds"] == 3
    cfg = compose(lists[2])
    # The preset's method and optimizer (docs/METHODS.md#protocol-wang2022: IW-Exp, SGD 8e-3 without momentum, best-val selection) ...
    assert (cfg.weighting.name, cfg.weighting.exponent, cfg.optim.lr, cfg.optim.momentum) == ("iw", 1.5, 8e-3, 0.0)
    assert cfg.train.select == "best:group_balanced_acc" and cfg.name == "CE+IW-Exp-ES" and cfg.seed == 2
    # ... for its 400 epochs on a fifth of the images, with an MLP.
    assert cfg.train.epochs == 400 and cfg.data.n_majority == 1000 and cfg.model.name == "mlp"
    paper = reproductions.REPRODUCTIONS.get("wang2022-fig3").scales["paper"]
    cfg = compose(protocol.overrides("wang_fig5_poly_iw", paper)[9])
    assert (cfg.train.epochs, cfg.model.name, cfg.data.n_majority, cfg.seed) == (600, "convnet", 5000, 9)


def test_figure_4_reuses_figure_3s_runs(tmp_path):
    runs = tmp_path / "runs"
    reproductions.reproduce("wang2022-fig3", "tiny", tmp_path / "fig3", device="cpu", runs=runs)
    done = sorted(p.stat().st_mtime_ns for p in runs.glob("**/done"))
    fig4 = reproductions.reproduce("wang2022-fig4", "tiny", tmp_path / "fig4", device="cpu", runs=runs)
    assert sorted(p.stat().st_mtime_ns for p in runs.glob("**/done")) == done  # nothing trained again
    three = json.loads((tmp_path / "fig3" / "summary.json").read_text())
    four = json.loads((tmp_path / "fig4" / "summary.json").read_text())
    # Figure 3 reads the final weights, Figure 4 the selected ones: never worse on validation.
    for record in (json.loads(p.read_text()) for p in runs.glob("**/run.json")):
        if record["config"]["train"]["select"] != "last":
            assert record["selected"]["val"]["group_balanced_acc"] >= record["final"]["val"]["group_balanced_acc"]
    assert set(three["balanced_acc"]) == {"no_iw", "iw", "iw_exp"} and set(four["balanced_acc"]) == {"iw", "iw_exp"}
    assert fig4.key["ce_es_minus_final"]["iw"] == four["balanced_acc"]["iw"]["ce"] - _final_ce(runs, "CE+IW-ES")


def _final_ce(runs, name):
    finals = [json.loads(p.read_text())["final"]["test"]["balanced_acc"] for p in runs.glob(f"**/{name}@*/*/run.json")]
    return sum(finals) / len(finals)
