"""``train.amp=auto``: what it resolves to, and that runs keep their identities (shiftkit.precision)."""

import pytest
from omegaconf import OmegaConf

from shiftkit import precision
from shiftkit.config import compose
from shiftkit.config_schema import TrainConf
from shiftkit.runner import run_dir


def _amp_and_dir(overrides):
    cfg = compose([*overrides, "out=r"])
    return cfg.train.amp, run_dir(OmegaConf.to_container(cfg, resolve=True))


@pytest.fixture
def native(monkeypatch):
    """A device that computes in bfloat16, for every device name."""
    monkeypatch.setattr("shiftkit.environment.bf16_native", lambda device: True)


def test_auto_is_the_default_and_resolves_to_float32_for_a_family_not_verified(native):
    assert TrainConf().amp == "auto"
    assert precision.VERIFIED.get("mlp") is None  # no family is verified yet: auto is float32 everywhere
    amp, folder = _amp_and_dir(["device=cpu"])
    assert amp == "none" and folder == _amp_and_dir(["device=cpu", "train.amp=none"])[1]


@pytest.mark.parametrize("is_native, expected", [(True, "bf16"), (False, "none")])
def test_auto_picks_bf16_only_where_native_and_verified(monkeypatch, is_native, expected):
    monkeypatch.setitem(precision.VERIFIED, "mlp", ("cpu",))
    monkeypatch.setattr("shiftkit.environment.bf16_native", lambda device: is_native)
    amp, folder = _amp_and_dir(["device=cpu"])
    assert amp == expected
    assert folder == _amp_and_dir(["device=cpu", f"train.amp={expected}"])[1]  # the run that asked for it by name
    other = "none" if expected == "bf16" else "bf16"
    assert folder != _amp_and_dir(["device=cpu", f"train.amp={other}"])[1]
    assert _amp_and_dir(["device=cpu", "model=linear"])[0] == "none"  # a family not verified


def test_auto_picks_bf16_only_on_the_device_types_a_family_was_verified_on(native, monkeypatch):
    monkeypatch.setitem(precision.VERIFIED, "mlp", ("cuda",))
    assert precision.resolve("auto", "cpu", "mlp") == "none"
    monkeypatch.setattr("shiftkit.environment.resolve_device", lambda name: "cuda:0")
    assert precision.resolve("auto", "auto", "mlp") == "bf16"


def test_an_explicit_precision_is_kept_whatever_the_device(native, monkeypatch):
    monkeypatch.setitem(precision.VERIFIED, "mlp", ("cpu",))
    assert _amp_and_dir(["device=cpu", "train.amp=none"])[0] == "none"
    assert _amp_and_dir(["device=cpu", "train.amp=bf16"])[0] == "bf16"
    assert precision.resolve("bf16", "cpu", None) == "bf16" and precision.resolve("auto", "cpu", None) == "none"


def test_a_reproduction_passes_its_precision_to_every_training_run(tmp_path, monkeypatch):
    from shiftkit import sweep
    from shiftkit.reproductions.reproduction import Context

    seen = []
    monkeypatch.setattr(sweep, "run_many", lambda lists, **kw: seen.extend(lists) or [{} for _ in lists])
    Context("x", "tiny", tmp_path, "cpu", amp="bf16").train([["loss=ce"], ["loss=poly"]])
    assert all(o[-1] == "train.amp=bf16" for o in seen) and len(seen) == 2


def test_an_unresolved_auto_names_the_run_it_resolves_to():
    """A launcher's job is composed by Hydra, not shiftkit: its identity still resolves ``auto``."""
    plain = OmegaConf.to_container(compose(["out=r", "device=cpu"]), resolve=True)
    folder = run_dir(plain)
    plain["train"]["amp"] = "auto"
    assert run_dir(plain) == folder


def test_a_launcher_job_records_the_precision_auto_resolved_to(tmp_path, monkeypatch):
    from shiftkit import launch, runner

    seen = []
    monkeypatch.setattr(runner, "run", lambda cfg: seen.append(cfg.train.amp) or {"failed": "x", "config": {}})
    monkeypatch.setattr(launch, "_line", lambda record: "")
    cfg = compose([f"out={tmp_path}", "device=cpu"])
    cfg.train.amp = "auto"  # as Hydra composes a job
    launch.task(cfg)
    assert seen == ["none"]


def test_every_verified_family_is_a_model_and_every_device_type_a_known_one():
    from shiftkit.models import MODELS

    models = set(MODELS.names())
    for family, devices in precision.VERIFIED.items():
        assert family in models, family
        assert devices and set(devices) <= {"cpu", "cuda"}, (family, devices)


def test_auto_follows_the_verified_families_on_a_device_that_computes_in_bf16(native, monkeypatch):
    monkeypatch.setattr("shiftkit.environment.resolve_device", lambda name: name)  # a GPU here too
    for family, devices in precision.VERIFIED.items():
        for device in ("cpu", "cuda"):
            expected = "bf16" if device in devices else "none"
            assert precision.resolve("auto", device, family) == expected, (family, device)


def test_a_reproduction_says_what_its_runs_trained_in(tmp_path, monkeypatch):
    """``auto`` resolves per model family, so a summary names the precisions its runs recorded."""
    import json

    from shiftkit import reproductions, sweep
    from shiftkit.reproductions import reproduction

    class Trains(reproduction.Reproduction):
        title, source, keys = "trains", "nowhere", ()
        scales = {s: {"n": 1} for s in reproductions.SCALES}

        def run(self, ctx, settings):
            ctx.train([["model=cnn"], ["model=mlp"]])
            return reproduction.Summary(key={}, rows=[("x", "1", "1")], claims=[], figures=[])

    trained_in = {"model=cnn": "bf16", "model=mlp": "none"}  # as auto on a CPU with BF16 makes them
    monkeypatch.setattr(sweep, "run_many", lambda lists, **kw: [
        {"config": {"train": {"amp": trained_in[o[0]]}}} for o in lists])
    monkeypatch.setitem(reproductions.REPRODUCTIONS._items, "trains", Trains)
    reproductions.reproduce("trains", "quick", tmp_path, device="cpu")
    assert json.loads((tmp_path / "summary.json").read_text())["precision"] == ["bfloat16", "float32"]
    assert "on cpu, in bfloat16 and float32 (train.amp=auto)." in (tmp_path / "summary.md").read_text()


def test_auto_keeps_an_autobalance_search_in_float32_even_for_a_verified_family(native, monkeypatch):
    monkeypatch.setitem(precision.VERIFIED, "mlp", ("cpu",))
    assert _amp_and_dir(["device=cpu"])[0] == "bf16"
    amp, folder = _amp_and_dir(["device=cpu", "experiment=autobalance", "data=digits_lt"])
    assert amp == "none"
    assert folder == _amp_and_dir(["device=cpu", "experiment=autobalance", "data=digits_lt", "train.amp=none"])[1]
    assert _amp_and_dir(["device=cpu", "experiment=autobalance", "data=digits_lt", "train.amp=bf16"])[0] == "bf16"
