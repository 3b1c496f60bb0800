"""The training engine: S seeds of one architecture trained as one computation.

Each seed's model is built after ``torch.manual_seed(seed)``, as a single run builds it, and
its parameters are stacked into [S, ...] leaves that one SGD updates (SGD acts on each element
alone, so that is S separate optimisers). For S > 1 the S networks run as one network S times
as wide whose seeds never mix: convolutions as one grouped convolution (S groups), group norms
as one group norm with S times the groups, the head as one batched matmul. Each seed sees its
own batches (its own :class:`~ladd_format.loader.DeviceLoader` seed: order, crop picks, DSA
draws) and gets the gradient a single run computes, up to float reassociation.

Data parallel: with loaders that render a share of each global batch (``DeviceLoader(share=
(rank, world))``) every rank starts from rank 0's parameters, weighs its rows by the global
batch size and sums the gradients over the ranks before each step (one flattened all-reduce,
:func:`~ladd_format.distributed.sum_gradients`, equivalent to DDP's bucketed one), so each
step is the single-process step up to float reassociation; the per-epoch losses are summed
over the ranks once an epoch.

Grouped convolutions were chosen over ``torch.func.vmap`` of ``functional_call`` by measurement
(2-core Xeon, ConvNet width 64, 600 inputs a seed, 5 seeds): bit-identical to separate models
in the forward pass, where vmap took twice as long (its group-norm rule applies the affine
part in extra passes and its convolution rule transposes the batch). The gain is meant for
GPUs, where one seed's kernels are too small to fill the device; no GPU was measured here.

Every architecture with only convolutions, group norms, ReLUs, pools and a linear head
(ConvNet, AlexNet, VGG11, ResNet18) runs grouped on the device types in
:data:`GROUPED_DEVICES`. Elsewhere, and for a model with dropout (the ViT) or batch norm, the
seeds run one after another through the same engine, sharing one upload: per-seed dropout
masks and batch statistics cannot be drawn inside one grouped pass the way S single runs
draw them.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .distributed import all_sum, broadcast_from_first, sum_gradients
from .dsa import apply_dsa_many
from .loader import DeviceLoader
from .models import _AlexNet, _BasicBlock, _ConvNet, _ResNet18, _VGG11, _group_norm

GROUPED_DEVICES: tuple[str, ...] = ("cuda",)
"""Device types where S > 1 seeds run as one grouped network. Not the CPU: there oneDNN's
grouped convolutions measured slower than one seed after another in every case tried (0.9x
at width 64 on 28 px, 0.7x at width 16, 0.2x to 0.5x at 128 px; benchmarks/results/train.md),
the work being memory bound; one by one gives the same results there, bit for bit."""

_PER_CHANNEL = (nn.ReLU, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
"""Parameter-free layers that act on each channel alone, so they run on S seeds' channels as they are."""

_RELU = nn.ReLU()
_TRUNKS: dict[type, tuple[tuple[str | nn.Module, ...], str]] = {
    _ConvNet: (("features",), "classifier"),
    _AlexNet: (("features",), "fc"),
    _VGG11: (("features",), "classifier"),
    _ResNet18: (("conv1", "bn1", _RELU, "layer1", "layer2", "layer3", "layer4", "pool"), "classifier"),
}
"""Per architecture: the layers up to the flattened features, then the name of the linear head."""


@dataclass(frozen=True)
class Plan:
    """What the engine needs, resolved by :func:`ladd_format.train.train`."""

    mode: str
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    crop_weight: float
    crop_reduction: str
    per_pass: int
    amp: bool = False
    channels_last: bool = False
    compile: bool | str = False  # or a torch.compile mode name


def groupable(model: nn.Module, device: torch.device | None = None) -> bool:
    """Whether S copies of ``model`` run as one grouped network (on ``device``, when given:
    see :data:`GROUPED_DEVICES`)."""
    if device is not None and device.type not in GROUPED_DEVICES:
        return False
    if type(model) not in _TRUNKS or any(True for _ in model.buffers()):
        return False
    layers, head = _TRUNKS[type(model)]
    return isinstance(getattr(model, head), nn.Linear) and all(
        _supported(getattr(model, item) if isinstance(item, str) else item) for item in layers)


def _supported(module: nn.Module) -> bool:
    if isinstance(module, (nn.Sequential, _BasicBlock)):
        return all(_supported(child) for child in module.children())
    return isinstance(module, (nn.Conv2d, nn.GroupNorm, *_PER_CHANNEL))


def stack(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The models' parameters stacked into [S, ...] leaves (copies), by name."""
    named = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([p[name].detach() for p in named]).requires_grad_() for name in named[0]}


def _run_grouped(module: nn.Module, prefix: str, params: dict[str, torch.Tensor], h: torch.Tensor,
                 s: int) -> torch.Tensor:
    """``module`` on [N, S*C, H, W], seed j holding channels j*C..(j+1)*C-1."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            h = _run_grouped(child, f"{prefix}{name}.", params, h, s)
        return h
    if isinstance(module, nn.Conv2d):
        bias = params.get(prefix + "bias")
        return F.conv2d(h, params[prefix + "weight"].flatten(0, 1), None if bias is None else bias.flatten(),
                        module.stride, module.padding, module.dilation, module.groups * s)
    if isinstance(module, nn.GroupNorm):
        weight, bias = params.get(prefix + "weight"), params.get(prefix + "bias")
        return _group_norm(h, module.num_groups * s, None if weight is None else weight.flatten(),
                           None if bias is None else bias.flatten(), module.eps)
    if isinstance(module, _BasicBlock):
        out = _run_grouped(module.conv1, prefix + "conv1.", params, h, s)
        out = F.relu(_run_grouped(module.bn1, prefix + "bn1.", params, out, s))
        out = _run_grouped(module.conv2, prefix + "conv2.", params, out, s)
        out = _run_grouped(module.bn2, prefix + "bn2.", params, out, s)
        return F.relu(out + _run_grouped(module.shortcut, prefix + "shortcut.", params, h, s))
    return module(h)


def grouped_forward(model: nn.Module, channels_last: bool = False
                    ) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """forward(params [S, ...], x [N, S, C, H, W]) -> logits [S, N, K] for a :func:`groupable` model."""
    layers, head = _TRUNKS[type(model)]

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        n, s = x.shape[:2]
        h = _layout(x.flatten(1, 2), channels_last)
        for item in layers:
            h = _run_grouped(getattr(model, item), item + ".", params, h, s) if isinstance(item, str) else item(h)
        features = h.reshape(n, s, -1).transpose(0, 1)
        return torch.baddbmm(params[head + ".bias"].unsqueeze(1), features,
                             params[head + ".weight"].transpose(1, 2))

    return forward


def single_forward(model: nn.Module, channels_last: bool = False
                   ) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """forward(params [1, ...], x [N, 1, C, H, W]) -> logits [1, N, K]: the model's own forward."""
    buffers = dict(model.named_buffers())

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        own = {name: p.view(p.shape[1:]) for name, p in params.items()}
        return functional_call(model, (own, buffers), (_layout(x[:, 0], channels_last),)).unsqueeze(0)

    return forward


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class _Compiled:
    """``torch.compile(fn)`` (in ``mode``, when named), or ``fn`` itself from the first failure
    on (one warning), since compiling needs a toolchain (a C++ compiler on CPU, Triton on CUDA)
    that may be missing.

    Shapes stay static (``dynamic=False``: one graph per batch shape, at most a few a run). By
    default a second shape of the same code recompiles it with symbolic sizes, which inductor
    failed to lower for these forwards (``cannot determine truth value of Relational``), so
    training went on eager. Dynamo keys its graphs, and its limit of 8 recompiles, by code
    object, which every run's forward shares; each run compiles a copy with its own code, so
    an earlier run (another model, another size) neither counts against it nor makes its
    shapes dynamic."""

    warned = False

    def __init__(self, fn: Callable, mode: str | None = None) -> None:
        self.fn = fn
        own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                 fn.__closure__)
        self.compiled: Callable | None = torch.compile(own, mode=mode, dynamic=False)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
                self.compiled = None
                if not _Compiled.warned:
                    _Compiled.warned = True
                    warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                                  "training runs eager", RuntimeWarning, stacklevel=2)
        return self.fn(*args)


def run(models: Sequence[nn.Module], loaders: Sequence[DeviceLoader], plan: Plan, *,
        soft: torch.Tensor | None = None, progress: bool = True) -> list[list[float]]:
    """Train ``models`` (one per loader) together; returns each seed's mean loss per epoch.

    The models' parameters are set to the trained values at the end. ``soft`` holds each image's
    soft label [M, K] for mode ``"soft"``. Loaders that render a share of each global batch
    train data-parallel over the default process group (see the module's docstring).
    """
    s, k, mode = len(models), loaders[0].k, plan.mode
    parallel = loaders[0].share[1] > 1
    params = stack(models)
    if parallel:
        broadcast_from_first(list(params.values()))
    forward = (grouped_forward if s > 1 else single_forward)(models[0], plan.channels_last)
    if plan.compile:
        forward = _Compiled(forward, plan.compile if isinstance(plan.compile, str) else None)
    for m in models:
        m.train()
    opt = torch.optim.SGD(list(params.values()), lr=plan.lr, momentum=plan.momentum,
                          weight_decay=plan.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[plan.epochs // 2], gamma=0.1)
    dev = loaders[0].device
    rows_per_pass = max(1, plan.per_pass // s)
    log = _LossLog(plan.epochs, s, dev)
    bar = tqdm(range(plan.epochs), desc=f"train {mode}" + (f" x{s} seeds" if s > 1 else ""), unit="epoch",
               disable=not progress, leave=False)
    for epoch in bar:
        total, steps = torch.zeros(s, device=dev), 0
        for step in zip(*(loader.plain_batches() for loader in loaders)):
            x, targets = _inputs(step, mode, soft)
            opt.zero_grad(set_to_none=True)
            for lo in range(0, len(x), rows_per_pass):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=plan.amp):
                    logits = forward(params, x[lo:lo + rows_per_pass])
                per_seed = _pass_loss(logits, lo, targets, plan, k)
                per_seed.sum().backward()
                total += per_seed.detach()
            if parallel:
                sum_gradients(list(params.values()))
            opt.step()
            steps += 1
        schedule.step()
        if parallel:
            all_sum(total)  # a collective, queued on the device like a kernel (NCCL)
        log.record(epoch, total / max(1, steps), bar)
    losses = log.values.T.tolist()  # the one host synchronisation of the run
    with torch.no_grad():
        for j, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][j])
            m.eval()
            if parallel:  # batch-norm statistics: rank 0's, so that every rank returns one model
                broadcast_from_first([b for b in m.buffers() if b.is_floating_point()])
    return losses


class _LossLog:
    """Each epoch's mean loss per seed, kept on the device and read back once, after training.

    Reading it every epoch is a host synchronisation, and at IPC 10 an epoch is one step: the
    host could not queue the next step while the device ran this one. The progress bar shows
    the newest epoch whose copy to the host has landed, without waiting for any.
    """

    def __init__(self, epochs: int, seeds: int, device: torch.device) -> None:
        self.values = torch.zeros(epochs, seeds, device=device)
        self.pending: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def record(self, epoch: int, mean: torch.Tensor, bar) -> None:
        self.values[epoch] = mean
        if bar.disable:
            return
        if self.values.device.type != "cuda":
            bar.set_postfix(loss=f"{mean.mean().item():.3f}")
            return
        done = torch.cuda.Event()
        self.pending.append((mean.mean().to("cpu", non_blocking=True), done))
        done.record()
        while self.pending and self.pending[0][1].query():
            shown = self.pending.pop(0)[0]
            bar.set_postfix(loss=f"{shown.item():.3f}")


@dataclass(frozen=True)
class _Targets:
    images: int          # rows [0, images) are full images, the rest crops
    batch: int           # images in the global batch (more than this step's images for a share)
    labels: torch.Tensor  # [S, images] class indices, or [S, images, K] soft labels
    dense: torch.Tensor   # [S, crops, K]


def _inputs(step, mode: str, soft: torch.Tensor | None) -> tuple[torch.Tensor, _Targets]:
    """One step of every seed as inputs [N, S, C, H, W] (images, then crops) with DSA applied
    (one call per family drawn across the seeds) and the targets of those rows."""
    xs, draws = [], []
    for batch, params in step:
        b = len(batch.images)
        if mode == "crops-only":
            xs.append(batch.crops)
            params = None if params is None else params.select(slice(b, None))
        else:
            xs.append(torch.cat([batch.images, batch.crops]) if len(batch.crops) else batch.images)
        draws.append(params)
    if draws[0] is not None and len(xs[0]):
        xs = apply_dsa_many(xs, draws)
    batches = [batch for batch, _ in step]
    images = 0 if mode == "crops-only" else len(batches[0].images)
    if mode == "soft":
        labels = torch.stack([soft[b.index] for b in batches])
    else:
        labels = torch.stack([b.labels for b in batches])
    return torch.stack(xs, dim=1), _Targets(images, batches[0].global_images, labels,
                                            torch.stack([b.dense for b in batches]))


def _pass_loss(logits: torch.Tensor, lo: int, t: _Targets, plan: Plan, k: int) -> torch.Tensor:
    """Each seed's share [S] of its step loss (Eq. 5, see :func:`ladd_format.train.ladd_loss`)
    from the rows lo..lo+n of the step: image rows weigh 1/B each, crop rows crop_weight/(B*k)
    (times k with ``crop_reduction="sum"``), B the global batch's images, so the passes of a
    step (and the shares of all ranks) add up to its loss."""
    logp = F.log_softmax(logits.float(), dim=-1)
    hi = lo + logits.shape[1]
    b = t.batch
    total = logp.new_zeros(logp.shape[0])
    if lo < t.images:
        part, labels = logp[:, :min(hi, t.images) - lo], t.labels[:, lo:min(hi, t.images)]
        picked = part.gather(-1, labels.unsqueeze(-1)) if labels.dim() == 2 else labels * part
        total = total - picked.sum((1, 2)) / b
    first = max(lo, t.images)
    if first < hi:
        dense = t.dense[:, first - t.images:hi - t.images]
        weight = (1.0 if plan.mode == "crops-only" else plan.crop_weight) / (b * k)
        if plan.crop_reduction == "sum":
            weight *= k
        total = total - (dense * logp[:, first - lo:]).sum((1, 2)) * weight
    return total
