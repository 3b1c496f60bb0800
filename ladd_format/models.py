"""The evaluation networks of the dataset-distillation field, for any size from 28 to 128 px.

Published accuracies of distilled sets are only comparable when the test networks are the
ones the field trains, so these follow the DC/DSA/DM, MTT and GLaD code bases layer for layer:
same layers, same order of construction (a ``torch.manual_seed`` draws the same weights as the
field's code) and the same parameter names, so the field's state dicts fit.

Where the field hard-codes a 32 px or a 128 px head, the head is sized from the input instead,
so every side from 28 to 128 px works. One rule of the field is kept everywhere: 1-channel
inputs get 2 px more padding in the first convolution (3 for the 3x3 convs of ConvNet and
VGG11, 4 for AlexNet's 5x5), which turns an MNIST-size 28 px image into a 32 px feature grid.
VGG11 also applies it to 3-channel inputs under 32 px (see :class:`_VGG11`).

Models take normalised float input ``[B, C, H, W]`` and return logits ``[B, num_classes]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInputError

MODEL_NAMES = ("convnet", "alexnet", "vgg11", "resnet18", "vit")

_NORMS = ("instancenorm", "batchnorm", "none")
_CONVNET_ALIASES = {"convnetd3": 3, "convnetd4": 4, "convnetd5": 5}
_MIN_SIDE, _MAX_SIDE = 28, 128
_CONVNET_WIDTH = 128
_CONVNET_DEPTHS = (3, 5)  # range of the automatic depth, inclusive
_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_VGG_CIFAR_MAX_SIDE = 32  # up to here the field's 32 px head (Linear 512); above, GLaD's


def build_model(name: str, in_channels: int, num_classes: int,
                image_size: int | tuple[int, int], *, depth: int | None = None,
                width: int | None = None, norm: str = "instancenorm") -> nn.Module:
    """Build one of :data:`MODEL_NAMES` (or ``convnetd3/d4/d5``) for the given input.

    ``image_size`` is a side in pixels or ``(H, W)``; each side must be 28..128.
    ``depth`` and ``width`` apply to the ConvNet only. Its default width is 128; its default
    depth is the smallest in 3..5 that leaves a final map of at most 4 px per side (5 if
    none does), which gives the field's ConvNetD3 at 28 and 32 px, D4 at 64 px and D5 at
    128 px. ``norm`` is ``"instancenorm"`` (the field's choice: GroupNorm with one group per
    channel), ``"batchnorm"`` or ``"none"``; it applies to ConvNet, VGG11 and ResNet18, as
    AlexNet and ViT have no normalisation slot. The ViT uses 4 px patches below 64 px and
    16 px patches from 64 px up (decided by the larger side); each side must be a multiple.
    Raises :class:`~ladd_format.errors.InvalidInputError` on unusable arguments.
    """
    key, alias_depth = _resolve_name(name)
    _check_int("in_channels", in_channels)
    if in_channels not in (1, 3):
        raise InvalidInputError(f"in_channels must be 1 or 3, got {in_channels}")
    _check_int("num_classes", num_classes)
    if num_classes < 1:
        raise InvalidInputError(f"num_classes must be positive, got {num_classes}")
    size = _image_size(image_size)
    if not isinstance(norm, str) or norm.lower() not in _NORMS:
        raise InvalidInputError(f"norm must be one of {', '.join(_NORMS)}; got {norm!r}")
    norm = norm.lower()
    if key != "convnet":
        for arg, value in (("depth", depth), ("width", width)):
            if value is not None:
                raise InvalidInputError(f"{arg} applies only to the convnet, not to {key}")
        if key in ("alexnet", "vit") and norm != "instancenorm":
            raise InvalidInputError(f"{key} has no normalisation layers; leave norm unset")

    if key == "convnet":
        return _build_convnet(in_channels, num_classes, size, depth, alias_depth, width, norm)
    if key == "alexnet":
        return _AlexNet(in_channels, num_classes, size)
    if key == "vgg11":
        return _VGG11(in_channels, num_classes, size, norm)
    if key == "resnet18":
        return _ResNet18(in_channels, num_classes, norm)
    return _build_vit(in_channels, num_classes, size)


def _resolve_name(name: str) -> tuple[str, int | None]:
    """Canonical model name and, for the convnetdN aliases, the depth it names."""
    if isinstance(name, str):
        key = name.strip().lower()
        if key in MODEL_NAMES:
            return key, None
        if key in _CONVNET_ALIASES:
            return "convnet", _CONVNET_ALIASES[key]
    known = ", ".join(MODEL_NAMES + tuple(_CONVNET_ALIASES))
    raise InvalidInputError(f"unknown model {name!r}; known models: {known}")


def _check_int(arg: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(f"{arg} must be an int, got {value!r}")


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from a side or a pair, each side checked against 28..128."""
    sides = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size,) * 2
    if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                  for s in sides):
        raise InvalidInputError(f"image_size must be an int or an (H, W) pair of ints, "
                                f"got {image_size!r}")
    if not all(_MIN_SIDE <= s <= _MAX_SIDE for s in sides):
        raise InvalidInputError(f"image sides must be {_MIN_SIDE}..{_MAX_SIDE} px, "
                                f"got {image_size!r}")
    return sides


def _norm2d(norm: str, channels: int) -> nn.Module:
    """The field's norm slot; 'instancenorm' is GroupNorm with one group per channel."""
    if norm == "instancenorm":
        return _GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> torch.Tensor:
    """``F.group_norm``, but under CUDA autocast in the autocast dtype (the kernel still sums
    the statistics in float32), as CPU autocast already runs it. CUDA autocast lists group_norm
    among its float32 ops, so the norm and the ReLU and pooling after it would read and write
    float32 maps between bfloat16 convolutions, twice the bytes on layers that are memory bound."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        with torch.autocast("cuda", enabled=False):
            return F.group_norm(x.to(dtype), num_groups, None if weight is None else weight.to(dtype),
                                None if bias is None else bias.to(dtype), eps)
    return F.group_norm(x, num_groups, weight, bias, eps)


class _GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and values) computed by :func:`_group_norm` in eager
    mode; TorchScript keeps the usual one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self._eager(x)

    @torch.jit.unused
    def _eager(self, x):  # not annotated, as _AvgPool2x2._fast
        return _group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def _first_padding(kernel: int, widen: bool) -> int:
    """Padding of the first conv; ``widen`` adds the field's 2 px for 28 px MNIST (-> 32 px)."""
    return kernel // 2 + (2 if widen else 0)


# ConvNet ---------------------------------------------------------------------------------

class _Pool2x2(torch.autograd.Function):
    """2x2 average pooling, stride 2, of a map with even sides: the values of ``avg_pool2d`` (to
    rounding) in a fraction of the CPU time. Row pairs are added as contiguous halves of a
    [.., H/2, 2W] view, column pairs by a matmul with a [W, W/2] matrix of 0.25s; the backward
    is the transposed matmul and one contiguous row copy. On a 2-core Xeon, 64 x 64 x 32 x 32:
    forward 2.1 ms against 10 ms, backward 4.4 ms against avg_pool2d's zero-fill and scatter
    (and a 600-input pass faulted every fresh buffer in: 190 ms for the forward alone)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        *lead, h, w = x.shape
        pairs = x.reshape(*lead, h // 2, 2 * w)
        return (pairs[..., :w] + pairs[..., w:]) @ _pool_matrix(w, x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        *lead, h, w = grad.shape
        rows = grad @ _pool_matrix(2 * w, grad).T
        return rows.unsqueeze(-2).expand(*lead, h, 2, 2 * w).reshape(*lead, 2 * h, 2 * w)


def _pool_matrix(w: int, like: torch.Tensor) -> torch.Tensor:
    """[w, w/2]: column j averages input columns 2j and 2j+1 (0.25 each, the other 0.5 is the row pair)."""
    m = torch.zeros(w, w // 2, dtype=like.dtype, device=like.device)
    m[torch.arange(w), torch.arange(w) // 2] = 0.25
    return m


class _AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` computed by :class:`_Pool2x2` on a CPU when both sides are even
    (elsewhere the usual kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scripted = torch.jit.is_scripting() or torch.jit.is_tracing()
        if not scripted and x.device.type == "cpu" and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
            return self._fast(x)
        return F.avg_pool2d(x, 2, 2)

    @torch.jit.unused
    def _fast(self, x):  # not annotated: TorchScript cannot resolve this module's string annotations here
        """TorchScript (scripted or traced) keeps the usual kernel; eager runs this."""
        return _Pool2x2.apply(x)


class _GrayWeightGrad(torch.autograd.Function):
    """``F.conv2d`` of a one-channel input whose weight gradient is one batched matmul of the
    output gradient [N, O, L] with the input's patches [N, L, k*k] (``F.unfold``), summed over
    the batch (the bias gradient from an extra row of ones), instead of oneDNN's weight-gradient
    kernel, which is slow for a single input channel. On a 2-core Xeon, 600 x 1 x 28 x 28 -> 64
    x 32 x 32 (the demo's first conv): 15 ms against 68 ms in bfloat16, 24 against 48 ms in
    float32; AlexNet's 5x5 -> 128: 47 against 168 ms. With three input channels oneDNN is as
    fast or faster, so only gray inputs take it. Under autocast the convolution runs in the
    autocast dtype as ``F.conv2d`` would."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
        xs, ws = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xs, ws)  # the operands as the convolution saw them
        ctx.geometry, ctx.has_bias = (stride, padding, dilation), bias is not None
        ctx.dtypes = x.dtype, weight.dtype
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(xs, ws, None if bias is None else bias.to(dtype), stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        xs, ws = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        x_dtype, w_dtype = ctx.dtypes
        patches = F.unfold(xs, ws.shape[-2:], dilation, padding, stride)  # [N, k*k, L]
        if ctx.has_bias:  # a row of ones: the bias gradient comes out of the same pass over grad
            patches = F.pad(patches, (0, 0, 0, 1), value=1.0)
        both = torch.bmm(grad.reshape(*grad.shape[:2], -1), patches.transpose(1, 2)).sum(0, dtype=torch.float32)
        grad_weight, grad_bias = (both[:, :-1], both[:, -1].to(w_dtype)) if ctx.has_bias else (both, None)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, xs, ws, None, stride, padding, dilation, False, [0, 0], 1, [True, False, False])[0].to(x_dtype)
        return grad_x, grad_weight.to(w_dtype).view_as(ws), grad_bias, None, None, None


class _InputConv2d(nn.Conv2d):
    """A network's first ``nn.Conv2d`` (same parameters, initialisation and values): training
    on a CPU with a one-channel input computes its weight gradient by :class:`_GrayWeightGrad`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scripted = torch.jit.is_scripting() or torch.jit.is_tracing()
        if (not scripted and self.in_channels == 1 and x.device.type == "cpu"
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and torch.is_grad_enabled() and self.weight.requires_grad):
            return self._fast(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _fast(self, x):  # not annotated, as _AvgPool2x2._fast
        return _GrayWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def _convnet_depth(first_side: int) -> int:
    """Smallest depth in 3..5 that leaves a map of at most 4 px per side (5 if none does).

    ``first_side`` is the larger side after the first conv. This reproduces the field's
    pairs (ConvNetD3 at 28 and 32 px, D4 at 64 px, D5 at 128 px) and fills in the sizes between.
    """
    low, high = _CONVNET_DEPTHS
    for d in range(low, high + 1):
        if first_side >> d <= 4:
            return d
    return high


class _ConvNet(nn.Module):
    """DC's ConvNet: depth x [conv3x3 -> norm -> ReLU -> avgpool 2], then one Linear."""

    def __init__(self, in_channels: int, num_classes: int, first: tuple[int, int],
                 depth: int, width: int, norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            pad = _first_padding(3, in_channels == 1) if d == 0 else 1
            layers.append((_InputConv2d if d == 0 else nn.Conv2d)(channels, width, kernel_size=3, padding=pad))
            if norm != "none":  # the field drops the layer, shifting the indices
                layers.append(_norm2d(norm, width))
            layers += [nn.ReLU(inplace=True), _AvgPool2x2(kernel_size=2, stride=2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * (first[0] >> depth) * (first[1] >> depth),
                                    num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _build_convnet(in_channels: int, num_classes: int, size: tuple[int, int],
                   depth: int | None, alias_depth: int | None, width: int | None,
                   norm: str) -> _ConvNet:
    extra = 2 * _first_padding(3, in_channels == 1) - 2
    first = (size[0] + extra, size[1] + extra)
    if depth is not None:
        _check_int("depth", depth)
        if alias_depth is not None and depth != alias_depth:
            raise InvalidInputError(f"convnetd{alias_depth} names depth {alias_depth}, "
                                    f"but depth={depth} was given")
    depth = depth if depth is not None else alias_depth
    if depth is None:
        depth = _convnet_depth(max(first))
    elif depth < 1 or min(first) >> depth < 1:
        raise InvalidInputError(f"convnet depth {depth} does not fit {size[0]}x{size[1]} px "
                                f"inputs: every block halves the map, which must keep >= 1 px")
    width = _CONVNET_WIDTH if width is None else width
    _check_int("width", width)
    if width < 1:
        raise InvalidInputError(f"width must be positive, got {width}")
    return _ConvNet(in_channels, num_classes, first, depth, width, norm)


# AlexNet ---------------------------------------------------------------------------------

class _AlexNet(nn.Module):
    """DC's small-image AlexNet; the fc is sized from the input (GLaD does the same)."""

    def __init__(self, in_channels: int, num_classes: int, size: tuple[int, int]):
        super().__init__()
        pad = _first_padding(5, in_channels == 1)
        self.features = nn.Sequential(
            _InputConv2d(in_channels, 128, kernel_size=5, stride=1, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        h, w = ((s + 2 * pad - 4) // 8 for s in size)
        self.fc = nn.Linear(192 * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


# VGG11 -----------------------------------------------------------------------------------

class _VGG11(nn.Module):
    """VGG11 with the field's norm slot and its two heads.

    Up to 32 px: DC's head, Linear(512) on the 1x1 map. Above 32 px: GLaD's head,
    AdaptiveMaxPool2d(7) -> Linear(512 * 7 * 7).

    The field's 1-channel first-conv padding (28 -> 32 px) is also used for 3-channel inputs
    with a side under 32 px. Without it a 28..31 px input reaches the last two convs as a 1x1
    map, where instance norm subtracts the only value: the logits no longer depend on the
    input, and training raises. With it every input up to 32 px ends in exactly 1x1.
    """

    def __init__(self, in_channels: int, num_classes: int, size: tuple[int, int], norm: str):
        super().__init__()
        small = max(size) <= _VGG_CIFAR_MAX_SIDE
        widen = in_channels == 1 or min(size) < _VGG_CIFAR_MAX_SIDE
        layers: list[nn.Module] = []
        channels = in_channels
        for i, item in enumerate(_VGG11_CFG):
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                pad = _first_padding(3, widen) if i == 0 else 1
                layers += [(_InputConv2d if i == 0 else nn.Conv2d)(channels, item, kernel_size=3, padding=pad),
                           _norm2d(norm, item), nn.ReLU(inplace=True)]
                channels = item
        if not small:
            layers.append(nn.AdaptiveMaxPool2d(7))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 if small else 512 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# ResNet18 --------------------------------------------------------------------------------

class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = _norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = _norm2d(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                _norm2d(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ResNet18(nn.Module):
    """The field's ResNet18: 3x3 stride-1 stem, no max-pool, global average pool.

    The stride-1 stem is kept at every size (GLaD evaluates 128 px sets with it too), so the
    128 px model runs its first stage at full resolution: slow on a CPU, but the field's net.
    """

    def __init__(self, in_channels: int, num_classes: int, norm: str):
        super().__init__()
        self.conv1 = _InputConv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _norm2d(norm, 64)
        planes_in = 64
        for index, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            blocks = nn.Sequential(_BasicBlock(planes_in, planes, stride, norm),
                                   _BasicBlock(planes, planes, 1, norm))
            setattr(self, f"layer{index}", blocks)
            planes_in = planes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(self.pool(out).flatten(1))


# ViT -------------------------------------------------------------------------------------
# GLaD's copy of lucidrains' vit-pytorch, without einops. Module names follow it, so its
# state dicts load. GLaD's 128 px ViT has its LayerNorms commented out (pre-norm and head);
# its CIFAR ViT keeps them. Both are reproduced as they are.

class _Patchify(nn.Module):
    """[B, C, H, W] -> [B, patches, p * p * C], patches row-major, pixels (p1 p2 c) inside."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, layer_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Attention(nn.Module):
    """Multi-head self-attention; no dropout on the attention weights, as in the field."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float, layer_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                _PreNorm(dim, _Attention(dim, heads, dim_head, dropout), layer_norm),
                _PreNorm(dim, _FeedForward(dim, mlp_dim, dropout), layer_norm),
            ])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class _ViT(nn.Module):
    """Patch embedding, learned positions, cls token, transformer, linear head on cls."""

    def __init__(self, in_channels: int, num_classes: int, size: tuple[int, int], *,
                 patch: int, depth: int, layer_norm: bool, dim: int = 512, heads: int = 8,
                 mlp_dim: int = 512, dim_head: int = 64, dropout: float = 0.1,
                 emb_dropout: float = 0.1):
        super().__init__()
        patches = (size[0] // patch) * (size[1] // patch)
        self.to_patch_embedding = nn.Sequential(_Patchify(patch),
                                                nn.Linear(in_channels * patch * patch, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = _Transformer(dim, depth, heads, dim_head, mlp_dim, dropout,
                                        layer_norm)
        head: list[nn.Module] = [nn.LayerNorm(dim)] if layer_norm else []
        self.mlp_head = nn.Sequential(*head, nn.Linear(dim, num_classes))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.to_patch_embedding(img)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.dropout(x + self.pos_embedding)
        return self.mlp_head(self.transformer(x)[:, 0])


def _build_vit(in_channels: int, num_classes: int, size: tuple[int, int]) -> _ViT:
    """GLaD's ViT (patch 16, depth 10) from 64 px up; its CIFAR ViT (patch 4, depth 6) below."""
    large = max(size) >= 64
    patch = 16 if large else 4
    if size[0] % patch or size[1] % patch:
        raise InvalidInputError(
            f"the vit for {size[0]}x{size[1]} px uses {patch} px patches, and each side must be "
            f"a multiple of {patch}"
        )
    return _ViT(in_channels, num_classes, size, patch=patch, depth=10 if large else 6,
                layer_norm=not large)
