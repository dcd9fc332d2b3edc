"""Augmentation policies in runs (docs/METHODS.md#augment-search): a learned policy moves in the AutoBalance
search and is recorded, a stopped search resumes to the uninterrupted result, fixed policies train with
``procedure=plain``, and what cannot run is refused in one line before anything trains."""

import json
from pathlib import Path

import pytest
import torch

from shiftkit import augment, data, losses, models, optim
from shiftkit.autobalance import search_and_retrain
from shiftkit.autobalance_search import AutoBalanceSearch
from shiftkit.config import compose
from shiftkit.errors import ShiftkitError
from shiftkit.runner import check, run


class Crash(Exception):
    pass


SEARCH = ["loss=autobalance", "procedure=autobalance", "procedure.step=0.1", "train.epochs=4", "train.eval_every=1", "procedure.start_epoch=1",
          "procedure.every=2", "procedure.batches=2", "procedure.retrain_epochs=2", "model.width=16", "device=cpu",
          "checkpoint.interval=0", "augment=policy", "augment.ops=[translate_x,rotate,contrast,cutout]",
          "procedure.augment_lr=0.05"]
KEYS = ("final", "selected", "steps", "alpha", "alpha_history", "augment")


def _run(out: Path, overrides=(), crash_at=None):
    def on_eval(record):
        if (record["phase"], record["epoch"]) == crash_at:
            raise Crash

    return run(compose([*SEARCH, *overrides, f"out={out}"]), on_eval=on_eval)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("searched"))


def test_a_learned_policy_moves_and_is_recorded(searched):
    folder = Path(searched["run_dir"])
    policy = searched["augment"]
    assert policy["ops"] == ["translate_x", "rotate", "contrast", "cutout"] and policy["learned"]
    magnitudes = torch.tensor(policy["per_class"]["magnitude"])
    assert magnitudes.shape == (2, 4)
    assert (magnitudes - 0.5).abs().max() > 1e-3  # the search moved it
    history = searched["alpha_history"]
    assert history[0]["augment.magnitude"] == [[0.5] * 4] * 2 and history[-1]["updates"] > 0
    assert torch.allclose(torch.tensor(history[-1]["augment.magnitude"]), magnitudes)
    assert (folder / "augment.png").stat().st_size > 0
    assert json.loads((folder / "run.json").read_text())["augment"] == policy


def test_a_search_with_a_policy_stopped_mid_search_resumes_to_the_same_result(tmp_path, searched):
    with pytest.raises(Crash):
        _run(tmp_path, crash_at=("search", 3))
    record = _run(tmp_path)
    assert record["resumed_from_phase"] == "search"
    for key in KEYS:
        assert record[key] == searched[key], key


def test_pda_alone_learns_only_the_policy_and_shared_is_one_row(tmp_path):
    record = _run(tmp_path, ["loss=ce", "augment.per=shared", "name=MADAO"])
    assert record["alpha"] == {} and set(record["alpha_history"][-1]) == {
        "epoch", "updates", "augment.magnitude", "augment.probability"}
    assert len(record["alpha_history"][-1]["augment.magnitude"]) == 1
    rows = record["augment"]["per_class"]["magnitude"]
    assert rows[0] == rows[1]  # every class shares the one row


def test_a_fixed_policy_trains_with_plain_and_changes_training(tmp_path):
    base = ["train.epochs=3", "model.width=16", "device=cpu", f"out={tmp_path}"]
    plain = run(compose(base))
    fixed = run(compose([*base, "augment=policy", "augment.learn=false", "augment.magnitude=0.9"]))
    again = run(compose([*base, "augment=policy", "augment.learn=false", "augment.magnitude=0.9"]), force=True)
    assert fixed["run_dir"] != plain["run_dir"] and "policy" in fixed["label"]
    assert fixed["final"] != plain["final"]
    assert again["final"] == fixed["final"]  # reproducible per seed


@pytest.mark.parametrize("overrides, message", [
    (["augment=policy"], "augment.learn=true is learned by procedure=autobalance"),
    (["augment=policy", "augment.learn=false", "procedure=jtt"], "trains with procedure=plain or procedure=autobalance"),
    (["augment=policy", "augment.learn=false", "augment.ops=[spin]"], "ops must name"),
    (["data=two_gaussians", "augment=policy", "augment.learn=false", "augment.ops=[rotate]"], "need images"),
    (["procedure=autobalance", "augment=policy", "augment.learn=false"], "has nothing to learn"),
    (["experiment=autobalance", "augment=policy", "procedure.augment_lr=-1"], "procedure.augment_lr must be > 0, got -1"),
])
def test_what_cannot_run_is_refused_in_one_line(overrides, message):
    with pytest.raises(ShiftkitError, match=message) as info:
        check(compose(overrides))
    assert "\n" not in str(info.value)


def test_an_ensemble_with_a_policy_is_refused(tmp_path):
    from shiftkit.members import EnsembleUnsupported

    with pytest.raises(EnsembleUnsupported, match="augmentation policy"):
        from shiftkit.runner import execute

        execute([compose(["augment=policy", "augment.learn=false", f"seed={s}", f"out={tmp_path}"]) for s in (0, 1)],
                stacked=True)


def test_the_search_hypergradient_with_a_policy_equals_the_generic_one_at_the_same_draws():
    """AutoBalanceSearch's chunked, forward-over-reverse hypergradient equals bilevel.hypergradient of the
    same training loss (augmented inputs from the same draw, relaxed gates) on the same batches."""
    from torch.func import functional_call

    from shiftkit.bilevel import hypergradient

    splits = data.build("digits_lt")
    stats = splits.statistics()
    torch.manual_seed(0)
    model = models.build("mlp", width=8, **stats)
    loss = losses.build("autobalance", **stats)
    policy = augment.build("policy", ops=["translate_y", "shear_y", "brightness", "noise"], **stats)
    search = AutoBalanceSearch(model, loss, splits, epochs=2, start_epoch=0, batches=2, batch_size=16, terms=3,
                               step=0.5, curvature_batches=None, stop_on_growth=False, augment=policy)
    index = search.draw()
    state = search.aug_gen.get_state()
    ours = search.hypergradient(*index)
    search.aug_gen.set_state(state)
    (xt, yt, _), (xv, yv, gv) = search.stacked(search.train, index[0], True), search.stacked(search.val, index[1], False)
    draws = policy.draws(xt.flatten(0, 1), search.aug_gen)
    alpha = {k: v.detach() for k, v in search.alpha().items()}

    def inner(p, h):
        own = {k[8:]: v for k, v in h.items() if k.startswith("augment.")}
        x = functional_call(policy, own, (xt.flatten(0, 1), yt.flatten()), {"draws": draws, "relaxed": True})
        z = functional_call(model, p, (x.view(-1, 16, *x.shape[1:])[0],)), functional_call(model, p, (x.view(-1, 16, *x.shape[1:])[1],))
        lh = {k: v for k, v in h.items() if not k.startswith("augment.")}
        return torch.stack([functional_call(loss, lh, (zb, yb)).mean() for zb, yb in zip(z, yt)]).mean()

    def outer(p):
        return torch.stack([search.objective(functional_call(model, p, (xb,)), yb, gb)
                            for xb, yb, gb in zip(xv, yv, gv)]).mean()

    want = hypergradient(inner, outer, dict(model.named_parameters()), alpha, 3, 0.5, stop_on_growth=False)
    for key in alpha:
        assert torch.allclose(ours[key], want[key], atol=1e-6, rtol=1e-4), key
    assert ours["augment.magnitude"].abs().max() > 0


def test_search_and_retrain_refuses_nothing_to_learn():
    splits = data.build("digits_lt")
    stats = splits.statistics()
    fixed = augment.build("policy", learn=False, ops=["noise"], **stats)
    with pytest.raises(ShiftkitError, match="nothing to learn"):
        search_and_retrain(lambda: models.build("mlp", width=8, **stats), splits, losses.build("ce"),
                           optim.build("sgd"), search_epochs=1, retrain_epochs=1, augment=fixed)
