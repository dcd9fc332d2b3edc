"""The registry contract: strict names and options, data statistics passed only where used, the registered
name stamped on each method, constructor errors prefixed once, and kinds that are the config groups."""

import pytest

from shiftkit import data, losses, models, objectives, optim, reproductions, sampling, tracking, weighting
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


# --- one name, one place -------------------------------------------------------------------------------

EVERY = [*REGISTRIES, objectives.OBJECTIVES, tracking.LOGGERS, reproductions.REPRODUCTIONS]


@pytest.mark.parametrize(
    "registry, name", [(r, n) for r in EVERY for n in r.names()], ids=lambda x: x if isinstance(x, str) else x.kind
)
def test_registering_stamps_the_name(registry, name):
    assert registry.get(name).name == name


def test_a_registered_subclass_gets_its_own_name_and_an_unregistered_one_inherits():
    reg = Registry("thing")

    @reg.register("parent")
    class Parent:
        pass

    class Helper(Parent):
        pass

    @reg.register("child")
    class Child(Parent):
        pass

    assert (Parent.name, Child.name, Helper.name) == ("parent", "child", "parent")


def test_a_class_that_names_itself_differently_is_refused():
    reg = Registry("thing")

    class Named:
        name = "other"

    with pytest.raises(ValueError, match="registered as 'mine' but its class says name = 'other'"):
        reg.register("mine")(Named)
    assert "mine" not in reg


def test_a_class_may_repeat_its_registered_name():
    reg = Registry("thing")

    class Named:
        name = "same"

    assert reg.register("same")(Named).name == "same"


def test_functions_are_stamped_too():
    reg = Registry("thing")

    @reg.register("make")
    def make(size: int = 1) -> int:
        return size

    assert make.name == "make" and reg.build("make", size=2) == 2


def _raising(message: str):
    class Raising:
        def __init__(self):
            raise ShiftkitError(message)

    return Raising


@pytest.mark.parametrize(
    "message, expected",
    [
        ("size must be >= 1, got 0", "thing 'x': size must be >= 1, got 0"),
        ("thing 'x': size must be >= 1", "thing 'x': size must be >= 1"),
        ("thing 'x' needs the counts", "thing 'x' needs the counts"),
        ("thing.size must be >= 1", "thing.size must be >= 1"),
        ("x: no file here", "x: no file here"),
        ("thing 'y': size must be >= 1", "thing 'x': thing 'y': size must be >= 1"),
    ],
)
def test_constructor_errors_are_prefixed_exactly_once(message, expected):
    reg = Registry("thing")
    reg.register("x")(_raising(message))
    with pytest.raises(ShiftkitError) as err:
        reg.build("x")
    assert str(err.value) == expected


def test_the_prefix_keeps_the_error_type():
    class Special(ShiftkitError):
        pass

    reg = Registry("thing")

    @reg.register("x")
    def make():
        raise Special("it broke")

    with pytest.raises(Special, match="^thing 'x': it broke$"):
        reg.build("x")


def test_other_exceptions_pass_unchanged():
    reg = Registry("thing")

    @reg.register("x")
    def make():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="^a bug$"):
        reg.build("x")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("la", {"class_counts": [3, 0]}, "loss 'la': every entry of class_counts must be > 0"),
        ("la", {}, "loss 'la': needs class_counts"),
        ("poly", {"alpha": 0.0}, "loss 'poly': alpha must be > 0, got 0.0"),
        ("ldam", {"class_counts": [3, 1], "s": 0.0}, "loss 'ldam': s must be > 0, got 0.0"),
    ],
)
def test_method_errors_name_the_method_once(name, options, message):
    with pytest.raises(ShiftkitError) as err:
        losses.build(name, **options)
    text = str(err.value)
    assert text.startswith(message) and text.count(f"loss '{name}'") == 1


def test_registry_kinds_are_the_config_groups():
    from shiftkit.config import GROUPS

    for group, registry in GROUPS.items():
        assert registry.kind == group
    with pytest.raises(ShiftkitError, match="^unknown optim 'lbfgs'; choose one of: adam, sgd$"):
        optim.build("lbfgs")
