"""Procedures: a two-phase method is one registered class in one file (the test procedure below, in the
shape of JTT), checked before any run of a sweep trains; AutoBalance is one too; run identities of
earlier versions (``search.*``) are kept."""

import dataclasses
import json

import pytest
import torch
from omegaconf import OmegaConf

from shiftkit import procedures
from shiftkit.cli import main
from shiftkit.config import compose, legacy_overrides
from shiftkit.data import Splits
from shiftkit.errors import ShiftkitError
from shiftkit.runner import config_hash, run

TINY = ["train.epochs=2", "train.eval_every=1", "model.width=8", "device=cpu"]


class TwoPhase(procedures.Procedure):
    """Phase 1 fits ``first_epochs`` epochs; phase 2 trains the run's model with the training examples that
    phase 1 got wrong weighing ``upweight`` times the others."""

    def __init__(self, first_epochs: int = 1, upweight: float = 5.0):
        self.first_epochs, self.upweight = first_epochs, upweight

    def validate(self, plain):
        if self.first_epochs < 1:
            raise ShiftkitError(f"procedure.first_epochs must be >= 1, got {self.first_epochs}")
        if not self.upweight > 0:
            raise ShiftkitError(f"procedure.upweight must be > 0, got {self.upweight}")

    def epochs(self, plain):
        return self.first_epochs + plain["train"]["epochs"]

    def run(self, job):
        first = job.make_model()
        job.fit(first, epochs=self.first_epochs, checkpoint=None, on_eval=lambda r: job.write({"phase": "identify", **r}))
        train = job.splits.train
        with torch.no_grad():
            wrong = first(job.splits.pipeline(train.x)).argmax(1) != train.y
        upweighted = dataclasses.replace(train, weight=1.0 + (self.upweight - 1.0) * wrong.float())
        splits = Splits(upweighted, job.splits.val, job.splits.test, job.splits.info, job.splits.pipeline)
        result = job.fit(splits=splits, on_eval=lambda r: job.write({"phase": "retrain", **r}))
        return procedures.Outcome(result, job.parts["model"], {"identified_errors": int(wrong.sum())})


@pytest.fixture(autouse=True, scope="module")
def registered():
    """The test procedure is registered while this module's tests run (a user's would be at import)."""
    procedures.register("test_two_phase")(TwoPhase)
    yield
    procedures.PROCEDURES._items.pop("test_two_phase")


def test_a_two_phase_procedure_trains_records_both_phases_and_is_skipped_when_done(tmp_path):
    cfg = compose(["procedure=test_two_phase", "procedure.upweight=3", *TINY, f"out={tmp_path}"])
    record = run(cfg)
    assert record["status"] == "finished" and record["identified_errors"] >= 0
    assert record["config"]["procedure"] == {"name": "test_two_phase", "first_epochs": 1, "upweight": 3.0}
    lines = [json.loads(line) for line in open(f"{record['run_dir']}/metrics.jsonl")]
    assert [(line["phase"], line["epoch"]) for line in lines] == [("identify", 1), ("retrain", 1), ("retrain", 2)]
    assert "test_two_phase" in record["run_dir"]  # its label names the procedure
    assert run(cfg)["skipped"]


def test_a_procedure_is_listed_with_its_options(capsys):
    assert main(["list", "procedure"]) == 0
    out = capsys.readouterr().out
    assert "test_two_phase" in out and "upweight" in out and "autobalance" in out and "plain" in out


def test_bad_procedure_settings_stop_a_sweep_before_any_run_trains(tmp_path, capsys):
    code = main(["train", "-m", "procedure=test_two_phase", "procedure.upweight=2,0", *TINY, f"out={tmp_path}"])
    assert code == 2
    assert "procedure.upweight must be > 0, got 0" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.rglob("run.json"))
    code = main(["train", "-m", "experiment=autobalance", "seed=0,1", "search.objective=balanced_ce,nope", *TINY,
                 f"out={tmp_path}"])
    assert code == 2 and "unknown objective 'nope'" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.rglob("run.json"))


def test_seeds_of_a_multi_phase_procedure_train_one_by_one_under_ensemble(tmp_path, capsys):
    code = main(["train", "-m", "seed=0,1", "ensemble=true", "procedure=test_two_phase", *TINY, f"out={tmp_path}"])
    assert code == 0
    assert "trains each seed on its own" in capsys.readouterr().err
    assert len(list(tmp_path.rglob("done"))) == 2


#: Run identities made before procedures existed (AutoBalance's settings under ``search.*``): the same
#: configs must name the same directories, or every finished run would train again.
EARLIER_HASHES = [
    ([], "1169e7da03"),
    (["loss=poly", "weighting=iw", "seed=3"], "75a1f53c65"),
    (["experiment=autobalance", "search.start_epoch=1", "search.every=2"], "9a562e17ff"),
    (["experiment=autobalance_group", "data=digits_binary"], "ad5a81d788"),
    (["search.enabled=true", "loss=autobalance"], "988a974fa3"),
]


@pytest.mark.parametrize("overrides, expected", EARLIER_HASHES)
def test_runs_of_earlier_versions_keep_their_identity(overrides, expected):
    assert config_hash(OmegaConf.to_container(compose(overrides), resolve=True)) == expected
    spelled = [o.replace("search.enabled=true", "procedure=autobalance").replace("search.", "procedure.")
               for o in overrides]
    assert config_hash(OmegaConf.to_container(compose(spelled), resolve=True)) == expected


def test_a_record_of_either_version_reads_as_its_procedure():
    old = {"search": {"enabled": True, "every": 2}}
    assert procedures.settings(old) == {"name": "autobalance", "every": 2}
    assert procedures.settings({"search": {"enabled": False, "every": 2}}) == {"name": "plain"}
    assert procedures.settings({"procedure": {"name": "plain"}}) == {"name": "plain"}
    assert legacy_overrides(["+search.objective_options.lam=0.5", "search.enabled=false"]) == [
        "+procedure.objective_options.lam=0.5", "procedure=plain"]
