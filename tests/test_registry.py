"""The registry contract: strict names and options, data statistics passed only where used."""

import pytest

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.errors import ShiftkitError
from shiftkit.registry import Registry

REGISTRIES = [losses.LOSSES, weighting.WEIGHTINGS, sampling.SAMPLERS, models.MODELS, optim.OPTIMIZERS, data.DATASETS]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_unknown_name_lists_every_registered_name(registry):
    with pytest.raises(ShiftkitError) as err:
        registry.get("nope")
    message = str(err.value)
    assert "\n" not in message and "nope" in message
    for name in registry.names():
        assert name in message


def test_unknown_option_lists_the_options():
    with pytest.raises(ShiftkitError, match="has no option 'tau'; its options: alpha, beta, continuity"):
        losses.build("poly", tau=1.0)


def test_data_statistics_are_ignored_by_methods_that_do_not_use_them():
    loss = losses.build("ce", class_counts=[10, 1], group_counts=[10, 1])
    assert loss.__class__.__name__ == "CrossEntropy"


def test_duplicate_registration_is_refused():
    reg = Registry("thing")
    reg.register("a")(object)
    with pytest.raises(ValueError):
        reg.register("a")(object)
