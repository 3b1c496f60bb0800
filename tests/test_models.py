"""The evaluation networks: every size and channel count, the field's architecture, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ladd_format.errors import InvalidInputError
from ladd_format.models import MODEL_NAMES, build_model

SIZES = (28, 32, 64, 128)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.features(x)


@pytest.mark.parametrize("channels", (1, 3))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_shape_at_every_size(name, size, channels):
    classes = 10 if channels == 3 else 7
    torch.manual_seed(0)
    model = build_model(name, channels, classes, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-4  # the logits depend on the input


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_non_square_input(name):
    model = build_model(name.upper(), 3, 5, (32, 64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 64)).shape == (1, 5)


@pytest.mark.parametrize("size", (28, 32))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_gives_finite_gradients(name, size):
    torch.manual_seed(0)
    model = build_model(name, 3, 10, size)
    x = torch.randn(2, 3, size, size)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_model(name):
    torch.manual_seed(3)
    a = build_model(name, 3, 10, 32)
    torch.manual_seed(3)
    b = build_model(name, 3, 10, 32)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ConvNet ---------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", (1, 3))
@pytest.mark.parametrize("size, depth", [(28, 3), (32, 3), (64, 4), (128, 5)])
def test_convnet_depth_from_image_size(size, depth, channels):
    model = build_model("convnet", channels, 10, size, width=16)
    assert len(_convs(model)) == depth
    side = _feature_map(model, torch.zeros(1, channels, size, size)).shape[-1]
    assert side == (3 if (size, channels) == (28, 3) else 4)


def test_convnet_28px_maps():
    """3-channel 28 px ends in a 3x3 map; 1-channel gets the field's MNIST padding (4x4)."""
    rgb = build_model("convnet", 3, 10, 28)
    assert _feature_map(rgb, torch.zeros(1, 3, 28, 28)).shape[1:] == (128, 3, 3)
    assert rgb.classifier.in_features == 128 * 3 * 3
    gray = build_model("convnet", 1, 10, 28)
    assert _convs(gray)[0].padding == (3, 3)
    assert _feature_map(gray, torch.zeros(1, 1, 28, 28)).shape[1:] == (128, 4, 4)
    assert gray.classifier.in_features == 128 * 4 * 4


def test_convnet_width_and_aliases():
    model = build_model("ConvNetD4", 3, 10, 32, width=64)
    assert [c.out_channels for c in _convs(model)] == [64] * 4
    assert model.classifier.in_features == 64 * 2 * 2
    assert len(_convs(build_model("convnet", 3, 10, 128, depth=3))) == 3
    assert len(_convs(build_model("convnetd5", 3, 10, 32, depth=5))) == 5


def test_convnet_norms():
    norms = [m for m in build_model("convnet", 3, 10, 32).modules()
             if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(norms) == 3
    assert all(isinstance(n, nn.GroupNorm) and n.num_groups == n.num_channels == 128
               and n.affine for n in norms)
    bn = build_model("convnet", 3, 10, 32, norm="batchnorm")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3
    plain = build_model("convnet", 3, 10, 32, norm="none")
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in plain.modules())
    assert plain.features[0].padding == (1, 1) and isinstance(plain.features[1], nn.ReLU)


def test_convnet_blocks_in_the_fields_order():
    f = build_model("convnet", 3, 10, 32).features
    kinds = [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3  # the pool is an AvgPool2d(2, 2) subclass
    assert len(f) == len(kinds) and all(isinstance(m, kind) for m, kind in zip(f, kinds))
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in _convs(f))


def test_convnetd3_parameter_count_by_hand():
    """ConvNetD3, 32x32x3, width 128, 10 classes: the field's 320,010 parameters."""
    width, classes = 128, 10
    conv1 = 3 * width * 3 * 3 + width
    conv_n = width * width * 3 * 3 + width
    group_norm = 2 * width  # affine weight + bias
    fc = width * 4 * 4 * classes + classes
    expected = conv1 + 2 * conv_n + 3 * group_norm + fc
    assert expected == 320_010
    model = build_model("convnetd3", 3, classes, 32)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name, count", [
    ("alexnet", 1_872_202),
    ("vgg11", 9_231_114),
    ("resnet18", 11_173_962),  # the well-known CIFAR ResNet18 figure (affine norms)
    ("vit", 9_523_722),
])
def test_parameter_counts_at_32px(name, count):
    """Counts of the field's own code at 32x32x3, 10 classes, pinning each architecture."""
    model = build_model(name, 3, 10, 32)
    assert sum(p.numel() for p in model.parameters()) == count


# AlexNet, VGG11, ResNet18, ViT -----------------------------------------------------------

@pytest.mark.parametrize("channels, size, pad, side", [
    (1, 28, 4, 4), (3, 28, 2, 3), (3, 32, 2, 4), (3, 64, 2, 8), (3, 128, 2, 16),
])
def test_alexnet_fc_follows_input(channels, size, pad, side):
    model = build_model("alexnet", channels, 10, size)
    assert _convs(model)[0].padding == (pad, pad)
    assert model.fc.in_features == 192 * side * side


@pytest.mark.parametrize("channels, size, pad, fc_in", [
    (1, 28, 3, 512), (3, 28, 3, 512), (3, 31, 3, 512), (1, 32, 3, 512), (3, 32, 1, 512),
    (3, 33, 1, 512 * 7 * 7), (3, 64, 1, 512 * 7 * 7), (1, 128, 3, 512 * 7 * 7),
])
def test_vgg11_heads(channels, size, pad, fc_in):
    model = build_model("vgg11", channels, 10, size)
    assert _convs(model)[0].padding == (pad, pad)
    assert model.classifier.in_features == fc_in
    assert [c.out_channels for c in _convs(model)] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert isinstance(model.features[-1], nn.MaxPool2d if size <= 32 else nn.AdaptiveMaxPool2d)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 8 and all(n.num_groups == n.num_channels for n in norms)
    side = _feature_map(model, torch.zeros(1, channels, size, size)).shape[-1]
    assert side == (1 if size <= 32 else 7)


def test_vgg11_small_inputs_keep_a_2x2_map_for_the_last_convs():
    """Instance norm over a 1x1 map would erase the input; under 32 px the map stays 2x2."""
    model = build_model("vgg11", 3, 10, 28)
    with torch.no_grad():
        before_last_pool = model.features[:-1](torch.zeros(1, 3, 28, 28))
    assert before_last_pool.shape[-2:] == (2, 2)


def test_resnet18_layout():
    model = build_model("resnet18", 3, 10, 128)
    stem = model.conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.bias is None
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.classifier.in_features == 512
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 8 * 2 + 3 and all(n.num_groups == n.num_channels for n in norms)
    blocks = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(b) for b in blocks] == [2, 2, 2, 2]
    bn = build_model("resnet18", 3, 10, 32, norm="batchnorm")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == len(norms)


@pytest.mark.parametrize("size, patch, depth, layer_norms", [
    (28, 4, 6, 2 * 6 + 1), (32, 4, 6, 2 * 6 + 1), (64, 16, 10, 0), (128, 16, 10, 0),
])
def test_vit_variants(size, patch, depth, layer_norms):
    model = build_model("vit", 3, 10, size)
    assert len(model.transformer.layers) == depth
    assert model.pos_embedding.shape == (1, (size // patch) ** 2 + 1, 512)
    assert model.to_patch_embedding[1].in_features == 3 * patch * patch
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == layer_norms
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(p == 0.1 for p in drops)


def test_vit_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model("vit", 1, 10, 28)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))


@pytest.mark.parametrize("size, patch", [(30, 4), (72, 16), ((64, 40), 16)])
def test_vit_needs_whole_patches(size, patch):
    with pytest.raises(ValueError, match=rf"{patch} px patches") as info:
        build_model("vit", 3, 10, size)
    assert isinstance(info.value, InvalidInputError)
    assert str(size if isinstance(size, int) else size[1]) in str(info.value)


# Errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, message", [
    (("resnet50", 3, 10, 32), {}, "known models: convnet, alexnet, vgg11, resnet18, vit"),
    (("convnetd6", 3, 10, 32), {}, "unknown model 'convnetd6'"),
    ((None, 3, 10, 32), {}, "unknown model None"),
    (("convnet", 2, 10, 32), {}, "in_channels must be 1 or 3, got 2"),
    (("convnet", 3.0, 10, 32), {}, "in_channels must be an int"),
    (("convnet", 3, 0, 32), {}, "num_classes must be positive, got 0"),
    (("convnet", 3, True, 32), {}, "num_classes must be an int"),
    (("convnet", 3, 10, 27), {}, "image sides must be 28..128 px, got 27"),
    (("convnet", 3, 10, 129), {}, "image sides must be 28..128 px"),
    (("convnet", 3, 10, (32, 200)), {}, "image sides must be 28..128 px"),
    (("convnet", 3, 10, (32,)), {}, "image_size must be an int or an \\(H, W\\) pair"),
    (("convnet", 3, 10, "32"), {}, "image_size must be an int"),
    (("convnet", 3, 10, 32), {"norm": "layernorm"}, "norm must be one of instancenorm"),
    (("convnet", 3, 10, 32), {"width": 0}, "width must be positive"),
    (("convnet", 3, 10, 28), {"depth": 5}, "convnet depth 5 does not fit 28x28 px"),
    (("convnet", 3, 10, 32), {"depth": 0}, "convnet depth 0 does not fit"),
    (("convnetd3", 3, 10, 32), {"depth": 4}, "convnetd3 names depth 3, but depth=4"),
    (("vgg11", 3, 10, 32), {"depth": 3}, "depth applies only to the convnet, not to vgg11"),
    (("resnet18", 3, 10, 32), {"width": 64}, "width applies only to the convnet"),
    (("alexnet", 3, 10, 32), {"norm": "batchnorm"}, "alexnet has no normalisation layers"),
    (("vit", 3, 10, 32), {"norm": "none"}, "vit has no normalisation layers"),
])
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        build_model(*args, **kwargs)


def test_convnet_pooling_equals_avg_pool2d():
    """The ConvNet's CPU 2x2 pooling (pair sums and a matmul) gives avg_pool2d's values and gradients."""
    from ladd_format.models import _AvgPool2x2

    pool = build_model("convnet", 1, 10, 28, width=8).features[3]
    assert isinstance(pool, _AvgPool2x2) and isinstance(pool, nn.AvgPool2d)
    for shape in ((3, 8, 32, 32), (2, 4, 7, 6), (2, 4, 5, 5)):  # odd sides take avg_pool2d itself
        x = torch.randn(shape, requires_grad=True)
        y, ref = pool(x), nn.functional.avg_pool2d(x, 2, 2)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
        g = torch.randn_like(y)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,))


@pytest.mark.parametrize("name", ("convnet", "alexnet", "vgg11", "resnet18"))
def test_first_conv_of_gray_inputs_gives_conv2d_gradients(name):
    """A one-channel first conv computes its weight gradient by a patch matmul on a CPU: the
    values and every gradient (weight, bias, input) of ``nn.Conv2d``, in float32 and under
    bfloat16 autocast (within bf16 rounding); three channels and no-grad passes keep oneDNN."""
    from ladd_format import models

    torch.manual_seed(0)
    conv = _convs(build_model(name, 1, 10, 28))[0]
    assert type(conv) is models._InputConv2d and type(_convs(build_model(name, 1, 10, 28))[1]) is nn.Conv2d
    ref = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    conv64, ref64 = conv.double(), ref.double()
    w, b = torch.randn(2, 1, *conv.kernel_size, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, w, b: models._GrayWeightGrad.apply(a, w, b, conv.stride, conv.padding,
                                                                                 conv.dilation),
                                    (x[:2, :, :7, :7].requires_grad_(), w.requires_grad_(), b.requires_grad_()))
    for dtype, amp, tol in ((torch.float32, False, 1e-5), (torch.float32, True, 2e-2)):
        conv, ref = conv64.to(dtype), ref64.to(dtype)
        xs = x.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y, y_ref = conv(xs), ref(xs)
        assert y.dtype == y_ref.dtype and y.grad_fn.name() != y_ref.grad_fn.name()  # the fast path ran
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the same convolution kernel
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, [xs, *conv.parameters()], g)
        want = torch.autograd.grad(y_ref, [xs, *ref.parameters()], g)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
    with torch.no_grad():
        assert conv(x[:1].float()).grad_fn is None
    rgb = _convs(build_model(name, 3, 10, 32))[0]
    assert rgb(torch.randn(1, 3, 32, 32)).grad_fn.name() == "ConvolutionBackward0"
    if name == "convnet":  # TorchScript keeps the usual kernel (one model suffices: one class)
        gray = build_model(name, 1, 10, 28, width=8).eval()
        x = torch.randn(2, 1, 28, 28)
        torch.testing.assert_close(torch.jit.script(gray)(x), gray(x))


@pytest.mark.parametrize("name", ("convnet", "vgg11", "resnet18"))  # the field's AlexNet has no norm
def test_instance_norms_are_group_norms_with_the_usual_values_off_cuda(name):
    """The norms are ``nn.GroupNorm`` (one group a channel, the same parameters and names); off
    CUDA, with or without autocast, they compute exactly what ``nn.GroupNorm`` does."""
    from ladd_format import models

    torch.manual_seed(0)
    norms = [m for m in build_model(name, 3, 10, 32).modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is models._GroupNorm and m.num_groups == m.num_channels for m in norms)
    norm = norms[0]
    ref = nn.GroupNorm(norm.num_groups, norm.num_channels)
    ref.load_state_dict(norm.state_dict())
    for amp in (False, True):
        x = torch.randn(3, norm.num_channels, 6, 6, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y, y_ref = norm(x), ref(x)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, [x, *norm.parameters()], g),
                        torch.autograd.grad(y_ref, [x, *ref.parameters()], g)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_runs_the_norm_in_bf16():
    """Under CUDA autocast the norm's output is bfloat16 (autocast alone would give float32)
    and within bf16 rounding of the float32 norm; the float32 parameters get float32 gradients."""
    from ladd_format import models

    torch.manual_seed(0)
    norm = models._GroupNorm(16, 16).cuda()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 16, 32, 32, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = norm(x)
        assert nn.functional.group_norm(x.bfloat16(), 16).dtype == torch.float32  # what autocast does
    assert y.dtype == torch.bfloat16
    want = nn.functional.group_norm(x, 16, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)
    y.float().square().sum().backward()
    assert norm.weight.grad.dtype == torch.float32 and torch.isfinite(norm.weight.grad).all()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
