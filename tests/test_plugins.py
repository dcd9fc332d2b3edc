"""Plugins (shiftkit.plugins, docs/PLUGINS.md): a user's own method reaches the command line and the launcher's
worker processes through $SHIFTKIT_PLUGINS or an entry point, loads once, fails in one line; and the contract
checks of shiftkit.testing pass on built-in names and fail on broken ones."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from shiftkit import losses, plugins, testing, weighting

TINY = ["train.epochs=1", "train.eval_every=1", "model.width=8", "device=cpu"]
PLUGIN_CE = """
from shiftkit.losses import register
from shiftkit.losses.basic import CrossEntropy


@register("{name}")
class PluginCE(CrossEntropy):
    \"\"\"Cross-entropy, registered by a plugin.\"\"\"
"""
BROKEN = """
import torch
from shiftkit import guards, weighting
from shiftkit.losses import Loss, register
from shiftkit.losses.basic import CrossEntropy


@register("broken_shape")
class Unreduced(Loss):
    def forward(self, logits, y, g=None):
        guards.check("loss 'broken_shape'", y, g, logits=logits)
        return logits.exp()


@register("broken_nan")
class NaNs(CrossEntropy):
    def forward(self, logits, y, g=None):
        return super().forward(logits, y, g) * float("nan")


@register("broken_position")
class ByPosition(CrossEntropy):
    def forward(self, logits, y, g=None):
        out = super().forward(logits, y, g)
        return out * torch.linspace(0.5, 1.5, len(out))


@register("broken_unguarded")
class Unguarded(Loss):
    def forward(self, logits, y, g=None):
        return torch.nn.functional.cross_entropy(logits, y.long().clamp(0, logits.shape[1] - 1), reduction="none")


@weighting.register("broken_negative")
class Negative(weighting.Weighting):
    def weigh(self, losses, y, g, state):
        return -torch.ones_like(losses)
"""


def write(directory, name, text):
    (directory / f"{name}.py").write_text(textwrap.dedent(text))


def shiftkit(*args, cwd, path=(), plugins_env=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop(plugins.ENV, None)
    if plugins_env is not None:
        env[plugins.ENV] = plugins_env
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "shiftkit", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """In-process loading from tmp_path, undone afterwards: registries, modules and what plugins loaded."""
    registries = [losses.LOSSES, weighting.WEIGHTINGS]
    saved = [dict(r._items) for r in registries]
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_done", set())
    monkeypatch.setattr(plugins, "_order", [])
    yield tmp_path
    for registry, items in zip(registries, saved):
        registry._items = items
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def test_a_plugin_loss_trains_from_the_command_line(tmp_path):
    write(tmp_path, "ce_plugin", PLUGIN_CE.format(name="plugin_ce"))
    out = tmp_path / "results"
    res = shiftkit("train", "loss=plugin_ce", "seed=3", f"out={out}", *TINY, cwd=tmp_path, path=[tmp_path],
                   plugins_env=" ce_plugin , ")
    assert res.returncode == 0, res.stderr
    (run,) = [p.parent for p in out.rglob("done")]
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["loss"] == {"name": "plugin_ce"} and record["config"]["seed"] == 3


def test_a_plugin_loss_reaches_the_joblib_workers(tmp_path):
    write(tmp_path, "ce_plugin", PLUGIN_CE.format(name="plugin_ce"))
    out, cwd = tmp_path / "results", tmp_path / "cwd"
    cwd.mkdir()
    res = shiftkit("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "loss=plugin_ce",
                   f"out={out}", *TINY, cwd=cwd, path=[tmp_path], plugins_env="ce_plugin")
    assert res.returncode == 0, res.stderr
    records = [json.loads((p.parent / "run.json").read_text()) for p in out.rglob("done")]
    assert sorted((r["config"]["loss"]["name"], r["config"]["seed"]) for r in records) == [
        ("plugin_ce", 0), ("plugin_ce", 1)
    ]


def test_a_missing_plugin_is_one_line_and_exit_2(tmp_path):
    res = shiftkit("list", cwd=tmp_path, plugins_env="no_such_module")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("shiftkit: error: plugin 'no_such_module' (from $SHIFTKIT_PLUGINS)")
    assert "ModuleNotFoundError: No module named 'no_such_module'" in res.stderr


def test_load_twice_imports_once(isolated, monkeypatch):
    write(isolated, "counted_plugin", PLUGIN_CE.format(name="counted_ce") + "\nimport builtins\n"
          "builtins._shiftkit_imports = getattr(builtins, '_shiftkit_imports', 0) + 1\n")
    monkeypatch.setenv(plugins.ENV, "counted_plugin,counted_plugin")
    import builtins

    assert plugins.load() == ["counted_plugin"]
    assert plugins.load() == [] and plugins.loaded() == ["counted_plugin"]
    assert builtins._shiftkit_imports == 1 and "counted_ce" in losses.names()
    del builtins._shiftkit_imports


def test_entry_points_of_installed_distributions_load(tmp_path):
    for dist, entry, module in (("fakedist", "mine", "ep_plugin"), ("brokendist", "bad", "ep_missing")):
        root = tmp_path / dist
        info = root / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[shiftkit.plugins]\n{entry} = {module}\n")
    write(tmp_path / "fakedist", "ep_plugin", PLUGIN_CE.format(name="ep_ce"))
    listed = shiftkit("list", "loss", cwd=tmp_path, path=[tmp_path / "fakedist"])
    assert listed.returncode == 0, listed.stderr
    assert "  ep_ce: Cross-entropy, registered by a plugin." in listed.stdout
    broken = shiftkit("list", cwd=tmp_path, path=[tmp_path / "brokendist"])
    assert broken.returncode == 2 and broken.stderr.strip().count("\n") == 0, broken.stderr
    assert ("plugin 'ep_missing' (entry point 'bad' of brokendist 0.1 in group shiftkit.plugins) could not be "
            "imported: ModuleNotFoundError: No module named 'ep_missing'") in broken.stderr


@pytest.mark.parametrize("kind, name", [("loss", "ce"), ("loss", "la"), ("weighting", "group_dro"),
                                        ("sampler", "undersample"), ("model", "mlp"), ("data", "two_gaussians")])
def test_contract_checks_pass_on_built_in_names(kind, name):
    testing.check(kind, name)


@pytest.mark.parametrize(
    "check, name, message",
    [
        (testing.check_loss, "broken_shape", r"loss 'broken_shape': must return one value per example"),
        (testing.check_loss, "broken_nan", r"loss 'broken_nan': values must be finite"),
        (testing.check_loss, "broken_position", r"loss 'broken_position': values must be per example"),
        (testing.check_loss, "broken_unguarded", r"loss 'broken_unguarded': a label 3 of 3 classes must raise"),
        (testing.check_weighting, "broken_negative", r"weighting 'broken_negative': weights must be >= 0"),
        (testing.check_loss, "unregistered", r"loss 'unregistered': is not registered"),
    ],
)
def test_contract_checks_fail_on_a_broken_plugin(isolated, monkeypatch, check, name, message):
    write(isolated, "broken_plugin", BROKEN)
    monkeypatch.setenv(plugins.ENV, "broken_plugin")
    plugins.load()
    with pytest.raises(AssertionError, match=message):
        check(name)


def test_a_plugin_passes_the_contract_checks(isolated, monkeypatch):
    write(isolated, "ce_plugin", PLUGIN_CE.format(name="plugin_ce"))
    monkeypatch.setenv(plugins.ENV, "ce_plugin")
    plugins.load()
    testing.check("loss", "plugin_ce")
