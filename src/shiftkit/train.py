"""The one training loop: minimize ``mean(weights * losses)`` over batches drawn by a sampler.

ERM, importance weighting and DRO differ only in the weighting scheme, CE and the polynomially-tailed
loss only in the loss, undersampling only in the sampler (DESIGN.md). Data stays on the training device;
inside an epoch nothing synchronizes with the host (a non-finite objective is recorded on the device and
checked once per epoch). Model selection follows SPEC §2.4: ``last`` tests the final weights,
``best:<metric>`` the evaluation with the best validation ``<metric>`` (strictly better replaces, as a
max-mode checkpoint does; [W]'s IW-ES is ``best:group_balanced_acc``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .data.base import Split, Splits
from .data.pipeline import Pipeline
from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER, SCALAR_METRICS, Accumulator
from .optim import OptimSpec
from .sampling import Sampler, Shuffle
from .weighting import Weighting


class NonFiniteLoss(ShiftkitError):
    """The training objective became NaN or infinite."""


@dataclass
class FitResult:
    """Metrics per split (``train``, ``val``, ``test``) at the end and at the selected evaluation."""

    final: Dict[str, dict]
    selected: Dict[str, dict]
    selected_epoch: int
    history: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def parse_select(select: str) -> Optional[str]:
    """``"last"`` -> ``None``; ``"best:<metric>"`` -> ``<metric>``; anything else is an error."""
    if select == "last":
        return None
    metric = select[5:] if select.startswith("best:") else None
    if metric not in SCALAR_METRICS:
        raise ShiftkitError(
            f"train.select must be 'last' or 'best:<metric>' with a metric among {', '.join(SCALAR_METRICS)};"
            f" got '{select}'"
        )
    return metric


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    split: Split,
    batch_size: int = 4096,
    train_group_counts: Optional[list] = None,
    pipeline: Optional[Pipeline] = None,
) -> Dict[str, object]:
    """Metrics of ``model`` on ``split`` (SPEC §10), accumulated over batches; inputs go through
    ``pipeline`` (without augmentation) when given."""
    pipeline = pipeline or Pipeline()
    was_training = model.training
    model.eval()
    acc = Accumulator(split.num_classes, split.num_groups, device=split.y.device)
    for idx in torch.arange(len(split), device=split.y.device).split(batch_size):
        acc.update(model(pipeline(split.x[idx])), split.y[idx], split.g[idx])
    model.train(was_training)
    return acc.compute(train_group_counts)


def _better(value: Optional[float], best: Optional[float], metric: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def fit(
    model: nn.Module,
    splits: Splits,
    loss: nn.Module,
    weighting: Weighting,
    optim: OptimSpec,
    *,
    epochs: int,
    batch_size: int = 64,
    eval_every: int = 1,
    select: str = "last",
    sampler: Optional[Sampler] = None,
    seed: int = 0,
    device: str = "cpu",
    on_eval: Optional[Callable[[dict], None]] = None,
) -> FitResult:
    """Train ``model`` in place for ``epochs`` epochs; ``batch_size=0`` means full batch.

    ``seed`` fixes the data order (the caller seeds the model's initialization). ``on_eval`` receives
    each evaluation record ``{"epoch", "step", "train_loss", "train", "val", "test"}``. With
    ``select="best:<metric>"`` the model ends holding the selected weights.

    >>> import torch
    >>> from shiftkit import data, losses, models, optim, weighting
    >>> splits = data.build("two_gaussians")
    >>> _ = torch.manual_seed(0)
    >>> net = models.build("linear", input_shape=(2,), num_classes=2)
    >>> result = fit(net, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.1),
    ...              epochs=50, batch_size=0)
    >>> result.final["train"]["acc"]
    1.0
    """
    metric = parse_select(select)
    if epochs < 1 or batch_size < 0 or eval_every < 1:
        raise ShiftkitError("train.epochs and train.eval_every must be >= 1 and train.batch_size >= 0")
    sampler = sampler or Shuffle()
    model.to(device)
    loss.to(device)
    weighting.to(device)
    train, val, test = (s.to(device) for s in (splits.train, splits.val, splits.test))
    train_counts = splits.train.group_counts
    opt, schedule = optim.make(model.parameters(), epochs)
    gen = torch.Generator().manual_seed(seed)
    pipeline = splits.pipeline
    # Augmentation draws on the training device, from its own generator: reproducible per seed.
    aug_gen = torch.Generator(device=device).manual_seed(seed) if pipeline.augments else None
    bs = batch_size or len(train)
    history: List[dict] = []
    best_value, best_record = None, None
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        weighting.train()
        weighting.start_epoch(epoch)
        order = sampler.epoch(splits.train.y, splits.train.g, gen).to(device)
        total = torch.zeros((), device=device)
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        for idx in order.split(bs):
            per_example = loss(model(pipeline(train.x[idx], train=True, generator=aug_gen)), train.y[idx], train.g[idx])
            w = weighting.weights(per_example.detach(), train.y[idx], train.g[idx])
            objective = (w * per_example).mean()
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            bad = ~torch.isfinite(objective.detach())
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            total = total + objective.detach() * idx.numel()
            step += 1
        schedule.step()
        if int(first_bad) >= 0:
            raise NonFiniteLoss(
                f"the training loss became non-finite at step {int(first_bad)} (epoch {epoch + 1});"
                " the model diverged: try a lower optim.lr"
            )
        if (epoch + 1) % eval_every and epoch + 1 != epochs:
            continue
        record = {
            "epoch": epoch + 1,
            "step": step,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": float(total) / max(order.numel(), 1),
            "train": evaluate_model(model, train, train_group_counts=train_counts, pipeline=pipeline),
            "val": evaluate_model(model, val, train_group_counts=train_counts, pipeline=pipeline),
            "test": evaluate_model(model, test, train_group_counts=train_counts, pipeline=pipeline),
        }
        history.append(record)
        if metric is not None and _better(record["val"][metric], best_value, metric):
            best_value, best_record = record["val"][metric], record
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_eval is not None:
            on_eval(record)
    final = history[-1]
    chosen = best_record or final
    if best_record is not None:
        model.load_state_dict(best_state)
    return FitResult(
        final={k: final[k] for k in ("train", "val", "test")},
        selected={k: chosen[k] for k in ("train", "val", "test")},
        selected_epoch=chosen["epoch"],
        history=history,
        seconds=time.perf_counter() - start,
        steps=step,
    )
