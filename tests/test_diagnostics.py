"""Implicit-bias probes (shiftkit.diagnostics): formulas against numpy, margins against a direct
computation, and runs that log them (docs/METHODS.md#protocol-zhai2023, docs/METHODS.md#quirk-poly)."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import data, diagnostics, losses, models, optim, weighting
from shiftkit.config import compose
from shiftkit.data.base import Split
from shiftkit.errors import ShiftkitError
from shiftkit.runner import run
from shiftkit.train import fit

vectors = st.lists(st.floats(-100, 100), min_size=3, max_size=3).filter(lambda v: np.linalg.norm(v) > 1e-3)


@given(vectors, vectors)
def test_norms_and_gaps_match_numpy(a, b):  # docs/METHODS.md#reproduction-zhai2023-appc: ||θ/||θ|| − θ_ref/||θ_ref|||
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    na, nb = np.array(a), np.array(b)
    assert diagnostics.weight_norm(ta) == pytest.approx(np.linalg.norm(na))
    assert diagnostics.distance(ta, tb) == pytest.approx(np.linalg.norm(na - nb), abs=1e-9)
    gap = np.linalg.norm(na / np.linalg.norm(na) - nb / np.linalg.norm(nb))
    assert diagnostics.direction_gap(ta, tb) == pytest.approx(gap, abs=1e-9)
    assert 0.0 <= diagnostics.direction_gap(ta, tb) <= 2.0 + 1e-12
    assert diagnostics.direction_gap(ta, 3.0 * ta) == pytest.approx(0.0, abs=1e-12)  # scale-free


def test_gap_refuses_a_reference_of_another_size():
    with pytest.raises(ShiftkitError, match="same architecture"):
        diagnostics.direction_gap(torch.ones(3), torch.ones(4))


def test_group_min_margins_match_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 4, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    g = torch.randint(0, 4, (50,), generator=gen)
    g[g == 3] = 2  # group 3 stays empty
    net = torch.nn.Linear(4, 3)
    with torch.no_grad():
        logits = net(x)
    expected = []
    for group in range(4):
        rows = (g == group).nonzero().flatten().tolist()
        margins = [logits[i, y[i]] - max(logits[i, k] for k in range(3) if k != y[i]) for i in rows]
        expected.append(float(min(margins)) if margins else None)
    got = diagnostics.group_min_margins(net, Split(x, y, g, 3, 4), batch_size=7)
    assert got[3] is None and expected[3] is None
    assert got[:3] == pytest.approx(expected[:3], abs=1e-6)


def test_fit_logs_diagnostics_and_margins_turn_positive_at_interpolation():
    splits = data.build("two_gaussians")
    torch.manual_seed(0)
    net = models.build("linear", input_shape=(2,), num_classes=2)
    records = []
    result = fit(net, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.1),
                 epochs=60, batch_size=0, eval_every=20, probe=diagnostics.Probe(), on_eval=records.append)
    assert result.final["train"]["acc"] == 1.0
    last = records[-1]["diagnostics"]
    assert min(last["min_margin"]) > 0 and "direction_gap" not in last
    assert last["weight_norm"] == pytest.approx(diagnostics.weight_norm(diagnostics.flat_parameters(net)))
    norms = [r["diagnostics"]["weight_norm"] for r in records]
    assert norms == sorted(norms)  # CE keeps growing the weights on separable data
    # Zero training error is exactly a positive margin in every group (docs/METHODS.md#quirk-poly).
    for r in records:
        assert (r["train"]["acc"] == 1.0) == (min(r["diagnostics"]["min_margin"]) > 0)
    first = next(r["epoch"] for r in records if r["train"]["acc"] == 1.0)
    assert diagnostics.interpolation_epoch(result.history) == first > records[0]["epoch"]


TINY = ["train.epochs=4", "train.eval_every=2", "model.width=8", "device=cpu"]


def test_a_run_with_diagnostics_writes_weights_and_a_reference_gives_gaps(tmp_path):
    first = run(compose([f"out={tmp_path}", "diagnostics.enabled=true", *TINY]))
    ref = first["run_dir"]
    assert (tmp_path.glob("**/model.pt")) and "interpolation_epoch" in first
    lines = [json.loads(x) for x in open(f"{ref}/metrics.jsonl")]
    assert all("weight_norm" in r["diagnostics"] for r in lines)
    # The same training under another name, measured against the first: identical weights at the end.
    second = run(compose([f"out={tmp_path}", "diagnostics.enabled=true", f"diagnostics.reference={ref}", "name=again",
                          *TINY]))
    last = [json.loads(x) for x in open(f"{second['run_dir']}/metrics.jsonl")][-1]["diagnostics"]
    assert last["distance"] == 0.0 and last["direction_gap"] == 0.0
    other = run(compose([f"out={tmp_path}", "diagnostics.enabled=true", f"diagnostics.reference={ref}/model.pt",
                         "weighting=iw", *TINY]))
    last = [json.loads(x) for x in open(f"{other['run_dir']}/metrics.jsonl")][-1]["diagnostics"]
    assert last["direction_gap"] > 0.0


def test_runs_without_diagnostics_keep_their_identity(tmp_path):
    plain = run(compose([f"out={tmp_path}", *TINY]))
    assert "seed0-" in plain["run_dir"] and not list(tmp_path.glob("**/model.pt"))
    again = run(compose([f"out={tmp_path}", "diagnostics.enabled=false", *TINY]))
    assert again.get("skipped") and again["run_dir"] == plain["run_dir"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["diagnostics.enabled=true", "diagnostics.reference=/nonexistent"], "no model.pt at /nonexistent;"),
        (["diagnostics.reference=/tmp"], "diagnostics.reference needs diagnostics.enabled=true"),
        (["diagnostics.nope=1"], "diagnostics has no key 'nope'; its keys: enabled, reference"),
    ],
)
def test_bad_diagnostics_settings_are_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ShiftkitError, match=message):
        run(compose([f"out={tmp_path}", *overrides, *TINY]))
    assert not list(tmp_path.iterdir())


def test_autobalance_runs_save_the_retrained_model(tmp_path):
    record = run(compose([f"out={tmp_path}", "experiment=autobalance", "diagnostics.enabled=true", "search.every=2",
                          "search.batches=1", *TINY]))
    assert "interpolation_epoch" in record
    state = torch.load(f"{record['run_dir']}/model.pt", weights_only=True)
    assert sum(p.numel() for p in state["parameters"]) == sum(v.numel() for k, v in state["state_dict"].items())
