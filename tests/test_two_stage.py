"""Two-stage procedures (docs/METHODS.md#procedure-jtt, docs/METHODS.md#procedure-dfr,
docs/METHODS.md#procedure-crt): JTT's error set and upsampling, DFR's logistic regression and balanced
draws against scikit-learn's, cRT's frozen backbone, a known answer where JTT and DFR raise the worst
group's accuracy over ERM, run.json entries, refusals before anything trains, identities and resume."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from shiftkit import models, procedures, runner
from shiftkit.cli import main
from shiftkit.config import compose, options
from shiftkit.data.base import Split, Splits
from shiftkit.data.pipeline import Pipeline
from shiftkit.evaluation import evaluate_model
from shiftkit.models import weights
from shiftkit.procedures import dfr, jtt
from shiftkit.rundir import WEIGHTS_FILE
from shiftkit.runner import config_hash, run

BASE = ["train.epochs=3", "train.eval_every=1", "device=cpu", "checkpoint.interval=0"]
TINY = [*BASE, "model.width=8"]


class Crash(Exception):
    pass


def _job(overrides, records, splits=None):
    """A procedure's Job as the runner builds it (parts after seeding), writing records to ``records``."""
    cfg = compose([*overrides, *TINY])
    plain = OmegaConf.to_container(cfg, resolve=True)
    splits = splits or runner.load_data(plain["data"])
    torch.manual_seed(plain["seed"])
    parts = runner.build_parts(cfg, splits)

    def make():
        return models.build(cfg.model.name, **options(cfg.model), **splits.statistics())

    job = procedures.Job(cfg, plain, splits, parts, "cpu", records.append, make_model=make)
    return runner.procedure_of(plain), job


# --- JTT ---------------------------------------------------------------------------------------------

def test_jtt_upsamples_exactly_the_identification_models_training_errors(monkeypatch):
    seen, records = {}, []
    real = jtt.mistakes

    def spy(model, job):
        seen["model"], seen["errors"] = copy.deepcopy(model), real(model, job)
        return seen["errors"]

    class Spy(jtt.Upsampled):
        def __init__(self, index):
            super().__init__(index)
            seen["sampler"] = self

    monkeypatch.setattr(jtt, "mistakes", spy)
    monkeypatch.setattr(jtt, "Upsampled", Spy)
    procedure, job = _job(["procedure=jtt", "procedure.lambda_up=3", "procedure.identify_epochs=2"], records)
    outcome = procedure.run(job)
    train, errors = job.splits.train, seen["errors"]
    with torch.no_grad():
        predicted = seen["model"].eval()(job.splits.pipeline(train.x)).argmax(1)
    assert torch.equal(errors, predicted != train.y) and 0 < int(errors.sum()) < len(train)
    index = seen["sampler"].index  # every example once, and each error 3 more times
    assert torch.equal(torch.bincount(index, minlength=len(train)), 1 + 3 * errors.long())
    epoch = seen["sampler"].epoch(train.y, train.g, torch.Generator().manual_seed(1))
    assert torch.equal(epoch.sort().values, index.sort().values)
    assert outcome.extra["identified_errors"] == int(errors.sum())
    assert outcome.extra["upsampled_size"] == len(train) + 3 * int(errors.sum())
    assert sum(outcome.extra["error_groups"]) == int(errors.sum())
    assert [(r["phase"], r["epoch"]) for r in records] == [("identify", 1), ("identify", 2)] + [
        ("retrain", e) for e in (1, 2, 3)]
    assert outcome.model is job.parts["model"]


def test_jtt_identification_epochs_default_to_a_fraction_of_the_schedule():
    plain = {"train": {"epochs": 100}}
    assert procedures.build("jtt").identify(plain) == 20
    assert procedures.build("jtt", identify_fraction=0.001).identify(plain) == 1
    assert procedures.build("jtt", identify_epochs=7).epochs(plain) == 107


# --- DFR's logistic regression and draws ---------------------------------------------------------------

def _problem(n=120, d=6, classes=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = (x @ torch.randn(d, classes, generator=gen, dtype=torch.float64)
         + 0.5 * torch.randn(n, classes, generator=gen, dtype=torch.float64)).argmax(1)
    return x, y


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("C", [1.0, 0.1])
def test_dfr_logistic_regression_is_scikit_learns_liblinear_l1(classes, C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x, y = _problem(classes=classes)
    W, b = dfr.fit_l1(x, y, classes, C, "liblinear", seed=0)
    reference = LogisticRegression(C=C, solver="liblinear", random_state=0, **dfr._l1_options())
    if classes > 2:
        reference = OneVsRestClassifier(reference)
    reference.fit(x.numpy(), y.numpy())
    fits = reference.estimators_ if classes > 2 else [reference]
    assert np.array_equal(W.numpy(), np.concatenate([m.coef_ for m in fits]))
    assert np.array_equal(b.numpy(), np.concatenate([m.intercept_ for m in fits]))
    assert np.array_equal(dfr.predict(W, b, x).numpy(), reference.predict(x.numpy()))
    # the torch solver reaches the same optimum (liblinear solved tightly), the same predictions
    tight = LogisticRegression(C=C, solver="liblinear", random_state=0, tol=1e-10, max_iter=100000,
                               **dfr._l1_options())
    tight = (OneVsRestClassifier(tight) if classes > 2 else tight).fit(x.numpy(), y.numpy())
    Wt, bt = dfr.fit_l1(x, y, classes, C, "torch", seed=0)
    coef = np.concatenate([m.coef_ for m in (tight.estimators_ if classes > 2 else [tight])])
    assert np.allclose(Wt.numpy(), coef, atol=1e-5)
    assert np.array_equal(dfr.predict(Wt, bt, x).numpy(), tight.predict(x.numpy()))


def test_dfr_draws_are_group_balanced_and_its_halves_split_every_group():
    g = torch.tensor([0] * 9 + [1] * 4 + [2] * 7 + [3] * 5)
    gen = torch.Generator().manual_seed(0)
    picked = dfr.balanced(g, gen)
    assert torch.bincount(g[picked]).tolist() == [4, 4, 4, 4] and len(set(picked.tolist())) == 16
    fit, held = dfr.halves(g, gen)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(len(g)))
    assert torch.bincount(g[held]).tolist() == [4, 2, 3, 2] and torch.bincount(g[fit]).tolist() == [5, 2, 4, 3]


def test_dfr_head_predicts_as_the_released_codes_scaler_and_regression():
    """The final fit of ``on=val``: a balanced draw of validation, scaled by the TRAINING features' scaler,
    an L1 regression; folded into the head, it predicts what scikit-learn's pipeline predicts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _problem(n=200, d=5)
    g = 2 * y + (torch.arange(200) % 3 == 0).long()
    x = 3 * x + 1
    feats = {"train": Split(x[:100].float(), y[:100], g[:100], 2, 4),
             "val": Split(x[100:].float(), y[100:], g[100:], 2, 4)}
    procedure = dfr.DFR(retrains=1)
    W, b, size = procedure.refit(feats, 2, 0.3, torch.Generator().manual_seed(5), seed=0)
    head = torch.nn.Linear(5, 2)
    procedure.write_head(head, W, b)
    idx = dfr.balanced(g[100:], torch.Generator().manual_seed(5))
    scaler = StandardScaler().fit(feats["train"].x.double().numpy())
    xv = feats["val"].x.double().numpy()
    reference = LogisticRegression(C=0.3, solver="liblinear", random_state=0, **dfr._l1_options())
    reference.fit(scaler.transform(xv[idx.numpy()]), y[100:][idx].numpy())
    assert size == len(idx) == 4 * int(torch.bincount(g[100:]).min())
    with torch.no_grad():
        ours = head(feats["val"].x).argmax(1).numpy()
    assert np.array_equal(ours, reference.predict(scaler.transform(xv)))


# --- a known answer: a spurious attribute, a minority group ------------------------------------------

@pytest.fixture(scope="module")
def spurious_csv(tmp_path_factory):
    """Two features: a core one (the label, noisy) and a spurious one (the attribute, clean), which agree
    in 97% of training rows; validation and test are group-balanced, as in Waterbirds."""
    rng = np.random.default_rng(0)
    rows = []
    for split, counts in (("train", (450, 12, 12, 450)), ("val", (40,) * 4), ("test", (100,) * 4)):
        for group, n in enumerate(counts):
            y, a = divmod(group, 2)
            core, spur = (2 * y - 1) + rng.normal(0, 0.7, n), 3 * (2 * a - 1) + rng.normal(0, 0.5, n)
            rows += [f"{c:.4f},{s:.4f},{y},{a},{split}" for c, s in zip(core, spur, strict=True)]
    path = tmp_path_factory.mktemp("spurious") / "spurious.csv"
    path.write_text("core,spur,label,a,split\n" + "\n".join(rows) + "\n")
    return path


def _linear(path, out):
    return ["data=tabular", f"data.path={path}", "data.attribute=a", "data.split=split", "model=linear",
            "train.epochs=20", "train.eval_every=5", "optim.lr=0.1", "device=cpu", f"out={out}"]


def test_jtt_and_dfr_raise_the_worst_groups_accuracy_over_erm(spurious_csv, tmp_path):
    base = _linear(spurious_csv, tmp_path)
    worst = {}
    jtt_options = ["procedure=jtt", "procedure.identify_epochs=1", "procedure.lambda_up=20"]
    for name, extra in [("erm", []), ("jtt", jtt_options),
                        ("dfr", ["procedure=dfr"]), ("dfr_torch", ["procedure=dfr", "procedure.solver=torch"])]:
        record = run(compose(base + extra))
        worst[name] = record["final"]["test"]["worst_group_acc"]
        if name == "jtt":  # the errors are mostly the minority groups (1 and 2)
            groups = record["error_groups"]
            assert groups[1] + groups[2] > groups[0] + groups[3]
    assert worst["erm"] < 0.65, worst
    assert min(worst["jtt"], worst["dfr"], worst["dfr_torch"]) > 0.8, worst


# --- cRT -----------------------------------------------------------------------------------------------

def _head_name():
    cfg = compose(TINY)
    return weights.head_name(models.build(cfg.model.name, **options(cfg.model), input_shape=(1, 8, 8), num_classes=2))


def _backbone_and_head(state, head):
    return ({k: v for k, v in state.items() if not k.startswith(head + ".")},
            {k: v for k, v in state.items() if k.startswith(head + ".")})


def test_crt_retrains_the_head_and_leaves_the_backbone_bit_for_bit(tmp_path):
    states = {}
    for name in ("plain", "crt"):
        record = run(compose([f"procedure={name}", "save_weights=true", *TINY, f"out={tmp_path}"]))
        states[name] = weights.read(Path(record["run_dir"]) / WEIGHTS_FILE)
    head = _head_name()
    plain_backbone, plain_head = _backbone_and_head(states["plain"], head)
    crt_backbone, crt_head = _backbone_and_head(states["crt"], head)
    assert plain_backbone.keys() == crt_backbone.keys() and plain_backbone
    assert all(torch.equal(plain_backbone[k], crt_backbone[k]) for k in plain_backbone)
    assert not torch.equal(plain_head[head + ".weight"], crt_head[head + ".weight"])


@pytest.mark.parametrize("balance", ["sampling", "weighting"])
def test_crt_with_augmentation_trains_the_head_alone_with_the_backbone_frozen(balance):
    base = runner.load_data({"name": "digits_binary"})
    splits = Splits(base.train, base.val, base.test, info=base.info, pipeline=Pipeline(flip=True))
    records = []
    erm, job = _job(["procedure=plain"], [], splits=splits)
    erm.run(job)
    reference = copy.deepcopy(job.parts["model"].state_dict())
    procedure, job = _job(["procedure=crt", f"procedure.balance={balance}", "procedure.retrain_epochs=2"], records,
                          splits=splits)
    outcome = procedure.run(job)
    after = outcome.model.state_dict()
    name = _head_name()
    backbone, head = _backbone_and_head(after, name)
    assert all(torch.equal(v, reference[k]) for k, v in backbone.items())
    assert not torch.equal(head[f"{name}.weight"], reference[f"{name}.weight"])
    assert outcome.extra["crt"]["features"] == "frozen backbone"
    assert [r["phase"] for r in records] == ["erm"] * 3 + ["retrain"] * 2


# --- through the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("procedure, keys", [
    ("jtt", {"identified_errors", "error_groups", "upsampled_size", "identify_epochs", "identification"}),
    ("dfr", {"chosen_C", "C_scores", "balanced_size", "retrains", "erm", "val_in_retraining"}),
    ("crt", {"erm", "crt"}),
])
def test_the_command_line_writes_run_json_with_each_procedures_entries(tmp_path, procedure, keys):
    assert main(["train", f"procedure={procedure}", "save_weights=true", *TINY, f"out={tmp_path}"]) == 0
    (file,) = tmp_path.rglob("run.json")
    record = json.loads(file.read_text())
    assert keys <= set(record) and record["config"]["procedure"]["name"] == procedure
    phases = {json.loads(line)["phase"] for line in (file.parent / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"identify" if procedure == "jtt" else "erm", "retrain"}
    # the weights file is the run's model: evaluating it gives run.json's test metrics
    cfg = compose([f"procedure={procedure}", *TINY])
    splits = runner.load_data(OmegaConf.to_container(cfg.data, resolve=True))
    net = models.build(cfg.model.name, **options(cfg.model), **splits.statistics())
    net.load_state_dict(weights.read(file.parent / WEIGHTS_FILE))
    test = evaluate_model(net, splits.test, train_group_counts=splits.train.group_counts, pipeline=splits.pipeline)
    assert test["acc"] == record["final"]["test"]["acc"]


@pytest.mark.parametrize("overrides, message", [
    (["procedure=jtt", "procedure.lambda_up=0"], "procedure.lambda_up must be an integer >= 1"),
    (["procedure=jtt", "procedure.identify_fraction=0"], "procedure.identify_fraction must lie in (0, 1]"),
    (["procedure=jtt", "weighting=iw"], "procedure=jtt trains both phases with weighting=erm"),
    (["procedure=dfr", "procedure.solver=newton"], "procedure.solver must be 'liblinear' or 'torch'"),
    (["procedure=dfr", "procedure.Cs=[]"], "procedure.Cs must be a non-empty list"),
    (["procedure=dfr", "procedure.on=test"], "procedure.on must be 'val' or 'train'"),
    (["procedure=dfr", "model=linear", "model.bias=false"], "its head '1' is a linear layer without bias"),
    (["procedure=crt", "model=linear", "model.bias=false"], "procedure=crt retrains the model's head"),
    (["procedure=crt", "procedure.balance=both"], "procedure.balance must be 'sampling' or 'weighting'"),
    (["procedure=crt", "procedure.retrain_epochs=0"], "procedure.retrain_epochs must be >= 1"),
])
def test_bad_settings_are_one_line_before_anything_trains(tmp_path, capsys, overrides, message):
    size = [] if "model=linear" in overrides else ["model.width=8"]
    assert main(["train", *overrides, *BASE, *size, f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("shiftkit: error: ") and err.count("\n") == 1
    assert not any(tmp_path.rglob("run.json"))


def test_dfr_refuses_a_validation_split_without_every_group(tmp_path, capsys):
    rows = [f"{i % 7},{y},{a},{'val' if i % 5 == 0 else 'train'}" for i in range(100)
            for y, a in [(i % 2, (i // 2) % 2)] if not (i % 5 == 0 and (y, a) == (1, 1))]
    path = tmp_path / "gap.csv"
    path.write_text("f,label,a,split\n" + "\n".join(rows + ["3,0,0,test", "4,1,1,test"]) + "\n")
    args = ["train", "procedure=dfr", "data=tabular", f"data.path={path}", "data.attribute=a", "data.split=split",
            "model=linear", *BASE, f"out={tmp_path / 'out'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "procedure=dfr needs every group and class in the validation split" in err and err.count("\n") == 1
    assert not any(tmp_path.rglob("run.json"))


def test_each_procedure_and_option_is_its_own_run():
    settings = [["procedure=plain"], ["procedure=jtt"], ["procedure=jtt", "procedure.lambda_up=5"], ["procedure=dfr"],
                ["procedure=dfr", "procedure.on=train"], ["procedure=crt"],
                ["procedure=crt", "procedure.balance=weighting"]]
    hashes = [config_hash(OmegaConf.to_container(compose(s), resolve=True)) for s in settings]
    assert len(set(hashes)) == len(hashes)


# --- resume ---------------------------------------------------------------------------------------------

RESUME = {
    "jtt": ["procedure=jtt", "procedure.identify_epochs=2", "train.select=best:balanced_acc"],
    "dfr": ["procedure=dfr", "train.select=best:worst_group_acc"],
    "crt": ["procedure=crt", "procedure.retrain_epochs=3", "train.select=best:balanced_acc"],
}
KEYS = ("final", "selected", "selected_epoch", "steps", "identified_errors", "error_groups", "chosen_C", "C_scores",
        "crt")


def _run(name, out, crash_at=None, seen=None):
    def on_eval(record):
        if seen is not None:
            seen.append((record["phase"], record["epoch"]))
        if (record["phase"], record["epoch"]) == crash_at:
            raise Crash

    return run(compose([*RESUME[name], *TINY, f"out={out}"]), on_eval=on_eval)


@pytest.mark.parametrize("name, crash, resumed, trained", [
    ("jtt", ("identify", 2), ("identify", 1), [("identify", 2)] + [("retrain", e) for e in (1, 2, 3)]),
    ("jtt", ("retrain", 1), ("retrain", 0), [("retrain", e) for e in (1, 2, 3)]),
    ("jtt", ("retrain", 3), ("retrain", 2), [("retrain", 3)]),
    ("dfr", ("erm", 2), ("erm", 1), [("erm", 2), ("erm", 3), ("retrain", 1)]),
    ("dfr", ("retrain", 1), ("retrain", 0), [("retrain", 1)]),
    ("crt", ("retrain", 2), ("retrain", 1), [("retrain", 2), ("retrain", 3)]),
])
def test_a_stopped_run_resumes_in_its_phase_and_matches_one_never_stopped(tmp_path, name, crash, resumed, trained):
    want = _run(name, tmp_path / "reference")
    want_lines = (Path(want["run_dir"]) / "metrics.jsonl").read_text()
    with pytest.raises(Crash):
        _run(name, tmp_path / "stopped", crash)
    seen = []
    record = _run(name, tmp_path / "stopped", seen=seen)
    assert (record["resumed_from_phase"], record["resumed_from_epoch"]) == resumed
    assert seen == trained  # a finished first phase never trains again
    for key in KEYS:
        assert record.get(key) == want.get(key), key
    assert (Path(record["run_dir"]) / "metrics.jsonl").read_text() == want_lines
