"""Configs: every registered name composes from its generated schema; types are enforced."""

import pytest

from shiftkit.config import GROUPS, compose, expand_sweep
from shiftkit.errors import ShiftkitError

CHOICES = [(group, name) for group, registry in GROUPS.items() for name in registry.names()]


@pytest.mark.parametrize("group,name", CHOICES, ids=lambda v: str(v))
def test_every_registered_name_composes_with_its_defaults(group, name):
    cfg = compose([f"{group}={name}"])
    assert cfg[group].name == name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=nope"], "unknown loss 'nope'; choose one of: "),
        (["weighting=iw", "weighting.exponent=abc"], "weighting.exponent: Value 'abc'"),
        (["data=nope"], "unknown data 'nope'"),
        (["loss.tau=1"], "loss 'ce' has no option 'tau'"),
        (["train.epochs=1.5"], "train.epochs"),
        (["loss=ce,poly"], "needs the -m flag"),
        (["seed=abc"], "seed: Value 'abc'"),
    ],
)
def test_bad_overrides_give_one_line(overrides, message):
    with pytest.raises(ShiftkitError) as err:
        compose(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sweep_expansion_is_the_cartesian_product():
    runs = expand_sweep(["loss=ce,poly", "weighting=erm,iw", "seed=range(3)", "train.epochs=2"])
    assert len(runs) == 12 and all(r[-1] == "train.epochs=2" for r in runs)


#: Run identities made by earlier versions: new options at their defaults (``train.divergence``,
#: ``loss.cluster_init``) must not change them, or every finished run would train again. (A preset's runs
#: moved to folders that name it, ``@<preset>``; their hashes did not change.)
IDENTITIES = [
    ([], "digits_binary/ce+erm/seed0-1169e7da03"),
    (["loss=poly", "weighting=iw"], "digits_binary/poly+iw/seed0-41b165b12d"),
    (["experiment=autobalance"], "digits_binary/AutoBalance@autobalance/seed0-5877cb936d"),
    (["experiment=wang_fig5_poly_iw", "data=fmnist_binary"], "fmnist_binary/Poly+IW@wang_fig5_poly_iw/seed0-d29cec4d87"),
]


@pytest.mark.parametrize("overrides, folder", IDENTITIES, ids=[f for _, f in IDENTITIES])
def test_run_identities_of_earlier_versions_are_kept(overrides, folder, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setattr("shiftkit.environment.bf16_native", lambda device: False)  # train.amp=auto: float32

    from shiftkit.runner import run_dir

    assert run_dir(OmegaConf.to_container(compose([*overrides, "out=r"]), resolve=True)).as_posix() == f"r/{folder}"
    changed = compose([*overrides, "out=r", "train.divergence=10"])
    assert run_dir(OmegaConf.to_container(changed, resolve=True)).as_posix() == f"r/{folder}"  # not identity
