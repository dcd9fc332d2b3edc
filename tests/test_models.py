"""Model contracts over the registry, plus reference values: parameter counts of the published
architectures (LDAM-DRW ResNet-32, pytorch-cifar PreActResNet18), [W]'s ConvNet layer by layer (docs/METHODS.md#model-convnet),
one-line errors for unusable inputs, vmap ensembles of the BatchNorm-free models, and seeded init."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from shiftkit import models
from shiftkit.errors import ShiftkitError

IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
#: Models that read a flat vector; every other model needs (C, H, W).
FLAT_MODELS = {"linear", "mlp"}
#: (model, input) pairs below the architecture's minimum size.
TOO_SMALL = {("convnet", (1, 8, 8))}
#: BatchNorm-free models that must run as torch.func ensembles, with small inputs they accept.
ENSEMBLE_CASES = [
    ("linear", (1, 8, 8), {}),
    ("mlp", (1, 8, 8), {"width": 16}),
    ("cnn", (1, 8, 8), {"width": 4}),
    ("convnet", (1, 20, 20), {}),
]


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def assert_one_line_error(fn, *needles):
    with pytest.raises(ShiftkitError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=str)
@pytest.mark.parametrize("name", models.names())
def test_every_model_maps_images_to_logits(name, shape):
    build = lambda: models.build(name, input_shape=shape, num_classes=3)  # noqa: E731
    if (name, shape) in TOO_SMALL:
        assert_one_line_error(build, name, "at least")
        return
    torch.manual_seed(0)
    out = build()(torch.randn(2, *shape))
    assert out.shape == (2, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", models.names())
def test_flat_input_works_for_vector_models_and_is_a_clear_error_for_conv_models(name):
    build = lambda: models.build(name, input_shape=(784,), num_classes=2)  # noqa: E731
    if name in FLAT_MODELS:
        assert build()(torch.randn(2, 784)).shape == (2, 2)
    else:
        assert_one_line_error(build, name, "(C, H, W)", "(784,)")


@pytest.mark.parametrize(
    "name, options, count",
    [
        ("resnet32", {}, 464_154),  # LDAM-DRW resnet32(num_classes=10) with nn.Linear(64, 10)
        ("preact_resnet18", {}, 11_171_146),  # pytorch-cifar PreActResNet18()
        # 3·64·9+64 + 64·64·9+64 + 64·128·9+128 + 2·(128·128·9+128) + 2048·512+512 + 512·128+128 + 128·10+10
        ("convnet", {}, 1_523_786),
    ],
)
def test_parameter_counts_match_the_references(name, options, count):
    assert n_params(models.build(name, input_shape=(3, 32, 32), num_classes=10, **options)) == count


def layer_signature(net: nn.Sequential) -> list:
    out = []
    for m in net:
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.padding, m.stride))
        elif isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features))
        elif isinstance(m, nn.MaxPool2d):
            out.append(("pool", m.kernel_size))
        else:
            out.append(type(m).__name__)
    return out


@pytest.mark.parametrize(
    "shape, flat, spatial", [((3, 32, 32), 2048, 4), ((1, 28, 28), 1152, 3)], ids=["cifar", "mnist"]
)
def test_convnet_is_wangs_architecture(shape, flat, spatial):
    net = models.build("convnet", input_shape=shape, num_classes=5)
    c = shape[0]
    conv = lambda i, o: ("conv", i, o, (3, 3), (0, 0), (1, 1))  # noqa: E731
    assert layer_signature(net) == [
        conv(c, 64), "ReLU", conv(64, 64), "ReLU", ("pool", 2),
        conv(64, 128), "ReLU", conv(128, 128), "ReLU", conv(128, 128), "ReLU", ("pool", 2),
        "Flatten", ("linear", flat, 512), "ReLU", ("linear", 512, 128), "ReLU", ("linear", 128, 5),
    ]  # fmt: skip
    assert net[:12](torch.zeros(1, *shape)).shape == (1, 128, spatial, spatial)


def test_cnn_layers():
    net = models.build("cnn", input_shape=(1, 28, 28), num_classes=10, width=8)
    assert layer_signature(net) == [
        ("conv", 1, 8, (3, 3), (1, 1), (1, 1)), "ReLU", ("pool", 2),
        ("conv", 8, 16, (3, 3), (1, 1), (1, 1)), "ReLU", ("pool", 2),
        "Flatten", ("linear", 16 * 7 * 7, 32), "ReLU", ("linear", 32, 10),
    ]  # fmt: skip
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@pytest.mark.parametrize("name, smallest", [("convnet", 20), ("cnn", 4)])
def test_inputs_below_the_minimum_size_are_a_clear_error(name, smallest):
    ok = models.build(name, input_shape=(1, smallest, smallest + 3), num_classes=2)
    assert ok(torch.zeros(1, 1, smallest, smallest + 3)).shape == (1, 2)
    for shape in [(1, smallest - 1, smallest), (1, smallest, smallest - 1)]:
        assert_one_line_error(
            lambda shape=shape: models.build(name, input_shape=shape, num_classes=2),
            name,
            f"at least {smallest}x{smallest}",
        )


@pytest.mark.parametrize("name", ["cnn", "resnet32", "preact_resnet18"])
def test_width_must_be_positive(name):
    assert_one_line_error(lambda: models.build(name, input_shape=(3, 32, 32), num_classes=2, width=0), "width")


def test_resnets_take_any_channel_count_and_width():
    net = models.build("resnet32", input_shape=(1, 9, 7), num_classes=4, width=3)  # odd width: uneven padding
    assert net(torch.randn(2, 1, 9, 7)).shape == (2, 4)
    net = models.build("preact_resnet18", input_shape=(5, 6, 6), num_classes=2, width=2)
    assert net(torch.randn(2, 5, 6, 6)).shape == (2, 2)


def test_resnet32_init_is_kaiming_normal_fan_in():
    torch.manual_seed(0)
    net = models.build("resnet32", input_shape=(3, 32, 32), num_classes=10)
    conv = net.stages[-1].conv2.weight  # 64·9 = 576 fan-in, std sqrt(2/576)
    assert abs(conv.std().item() - (2 / 576) ** 0.5) < 0.003


@pytest.mark.parametrize("name, shape, options", ENSEMBLE_CASES, ids=[c[0] for c in ENSEMBLE_CASES])
def test_batchnorm_free_models_run_as_vmap_ensembles(name, shape, options):
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(models.build(name, input_shape=shape, num_classes=3, **options))
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    x = torch.randn(4, *shape)
    out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    assert out.shape == (3, 4, 3)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x), atol=1e-5, rtol=0)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name", models.names())
def test_same_seed_same_initial_weights(name):
    def weights(seed):
        torch.manual_seed(seed)
        return models.build(name, input_shape=(3, 32, 32), num_classes=2).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
