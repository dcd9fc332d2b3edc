"""Deep Feature Reweighting (Kirichenko et al. 2023; docs/METHODS.md#procedure-dfr): train as usual, then
refit the last layer by L1-regularized logistic regression on group-balanced held-out features.

The logistic regression is scikit-learn's ``LogisticRegression(penalty="l1", solver="liblinear")``, as the
released code fits it, or the same objective solved in torch (:func:`fista`): ``||w||_1 + C Σ_i
log(1 + exp(-s_i (w·x_i + b)))`` with the intercept penalized like a weight, as liblinear does
(``intercept_scaling=1``); more than two classes fit one-vs-rest problems, as liblinear does.

>>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]], dtype=torch.float64)
>>> y = torch.tensor([0, 0, 1, 1])
>>> w, b = fit_l1(x, y, 2, C=1.0, solver="liblinear", seed=0)
>>> w.shape, bool(w[0, 0] > 0)
(torch.Size([1, 1]), True)
>>> bool(torch.allclose(fit_l1(x, y, 2, C=1.0, solver="torch", seed=0)[0], w, atol=1e-3))
True
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShiftkitError
from ..evaluation import evaluate_model
from ..selection import FitResult
from . import Job, Outcome, Procedure, register
from .two_stage import ERM, RETRAIN, features, linear_head, ordinary_fit, resume_point, summary

#: The released code's grid of inverse regularization strengths C (Waterbirds; ``C_OPTIONS``).
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
#: Balanced draws averaged into the final head, per ``on`` (``num_retrains`` of the two evaluations).
RETRAINS = {"val": 20, "train": 10}


def _l1_options() -> Dict[str, Any]:
    """scikit-learn's spelling of the L1 penalty: ``l1_ratio=1`` from 1.8 on, ``penalty="l1"`` before."""
    from sklearn.linear_model import LogisticRegression

    deprecated = inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated"
    return {"l1_ratio": 1.0} if deprecated else {"penalty": "l1"}


def _liblinear(x: Tensor, positive: Tensor, C: float, seed: int) -> Tuple[Tensor, Tensor]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, solver="liblinear", random_state=seed, **_l1_options())
    model.fit(x.cpu().numpy(), positive.long().cpu().numpy())
    return torch.from_numpy(model.coef_[0]).to(x), torch.tensor(model.intercept_[0]).to(x)


def fista(x: Tensor, signs: Tensor, C: float, iterations: int = 20000, tol: float = 1e-9) -> Tuple[Tensor, Tensor]:
    """``(W [K, d], b [K])`` minimizing ``||(w_k, b_k)||_1 + C Σ_i log(1 + exp(-signs[i, k] (w_k·x_i + b_k)))``
    for each column ``k`` of ``signs`` (±1) by accelerated proximal gradient with adaptive restart, full
    batch, until the largest step is below ``tol`` (relative)."""
    X = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    step = 4.0 / (C * torch.linalg.matrix_norm(X, ord=2) ** 2).clamp_min(1e-12)  # 1 / Lipschitz constant
    w = torch.zeros(X.shape[1], signs.shape[1], dtype=x.dtype, device=x.device)
    z, t = w.clone(), 1.0
    for _ in range(iterations):
        grad = -C * X.T @ (signs * torch.sigmoid(-signs * (X @ z)))
        moved = z - step * grad
        new = moved.sign() * (moved.abs() - step).clamp_min(0)  # the L1 prox: soft thresholding
        if ((z - new) * (new - w)).sum() > 0:  # the momentum points uphill: restart it
            t = 1.0
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z, change = new + ((t - 1) / t_next) * (new - w), (new - w).abs().max()
        w, t = new, t_next
        if change <= tol * max(1.0, float(w.abs().max())):
            break
    return w[:-1].T.contiguous(), w[-1].clone()


def fit_l1(x: Tensor, y: Tensor, num_classes: int, C: float, solver: str, seed: int) -> Tuple[Tensor, Tensor]:
    """L1 logistic regression of ``y`` on ``x``: ``(W [K', d], b [K'])``, class 1's score for two classes
    (K' = 1, as scikit-learn's ``coef_``), else one row per class (one-vs-rest)."""
    positive = (y == 1)[:, None] if num_classes == 2 else y[:, None] == torch.arange(num_classes, device=y.device)
    if solver == "torch":
        return fista(x, positive.to(x.dtype) * 2 - 1, C)
    fits = [_liblinear(x, positive[:, k], C, seed) for k in range(positive.shape[1])]
    return torch.stack([w for w, _ in fits]), torch.stack([b for _, b in fits])


def predict(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    scores = x @ W.T + b
    return (scores[:, 0] > 0).long() if W.shape[0] == 1 else scores.argmax(1)


def worst_group_acc(pred: Tensor, y: Tensor, g: Tensor) -> float:
    return min(float((pred[g == k] == y[g == k]).double().mean()) for k in torch.unique(g).tolist())


def standardizer(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``StandardScaler``'s mean and scale (population std; a constant feature keeps scale 1)."""
    mean, std = x.mean(0), x.std(0, correction=0)
    return mean, torch.where(std < 10 * torch.finfo(x.dtype).eps, torch.ones_like(std), std)


def balanced(g: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of a group-balanced subset: each present group's ``min_k n_k`` examples, drawn at random."""
    members = [torch.nonzero(g == k).squeeze(1) for k in torch.unique(g).tolist()]
    size = min(len(m) for m in members)
    return torch.cat([m[torch.randperm(len(m), generator=generator)[:size]] for m in members])


def halves(g: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``(fit, held)``: each group's examples split at random, ``n_k // 2`` held and the rest to fit."""
    fit, held = [], []
    for k in torch.unique(g).tolist():
        m = torch.nonzero(g == k).squeeze(1)
        m = m[torch.randperm(len(m), generator=generator)]
        held.append(m[: len(m) // 2])
        fit.append(m[len(m) // 2:])
    return torch.cat(fit), torch.cat(held)


@register("dfr")
class DFR(Procedure):
    """Deep Feature Reweighting: refit the trained model's last layer on group-balanced held-out features.

    Phase ``erm`` is the run's ordinary fit. Then the model's penultimate features (the model without its
    head, in evaluation mode) are computed once per split, and the head is replaced by an L1 logistic
    regression (``solver``: ``liblinear``, scikit-learn's as in the released code, or ``torch``, the same
    objective by proximal gradient) on features standardized as ``StandardScaler`` does (unless
    ``standardize`` is false). ``on="val"`` (DFR^Val_Tr, the paper's method): C is chosen from ``Cs``
    (default the released Waterbirds grid) by the worst-group accuracy on one half of the validation
    split of a fit on a group-balanced subset of the other half (``tune_retrains`` random halvings,
    scores summed; ties go to the first C), then ``retrains`` group-balanced subsets of the whole
    validation split (default 20) are fit with that C and their coefficients averaged. ``on="train"``
    (DFR^Tr_Tr): C is chosen on the whole validation split and the fits use group-balanced subsets of the
    training split (default 10). A balanced subset holds every group's smallest count. The head is
    written into the model, so weights, evaluation and ``run.json`` are as for any run; with ``on=val``
    the validation metrics are not held out. ``run.json`` adds ``chosen_C``, each C's score
    (``C_scores``), ``balanced_size`` and the ERM phase's metrics; ``metrics.jsonl`` lines carry
    ``"phase": "erm"`` or ``"retrain"``. A run stopped after its ERM phase never trains it again.
    """

    #: C is tuned inside the procedure, on validation, as the released code does; nothing to search.
    search_space: Dict[str, str] = {}

    def __init__(self, on: str = "val", Cs: List[float] = C_GRID, retrains: Optional[int] = None,
                 tune_retrains: int = 1, standardize: bool = True, solver: str = "liblinear"):
        self.on, self.Cs, self.retrains, self.tune_retrains = on, [float(c) for c in Cs], retrains, tune_retrains
        self.standardize, self.solver = standardize, solver

    def validate(self, plain: Dict[str, Any]) -> None:
        if self.on not in RETRAINS:
            raise ShiftkitError(f"procedure.on must be 'val' or 'train', got '{self.on}'")
        if not self.Cs or not all(math.isfinite(c) and c > 0 for c in self.Cs):
            raise ShiftkitError(f"procedure.Cs must be a non-empty list of numbers > 0, got {self.Cs}")
        for key in ("retrains", "tune_retrains"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ShiftkitError(f"procedure.{key} must be >= 1, got {value}")
        if self.solver not in ("liblinear", "torch"):
            raise ShiftkitError(f"procedure.solver must be 'liblinear' or 'torch', got '{self.solver}'")

    def check(self, plain: Dict[str, Any], splits, parts: Dict[str, Any]) -> None:
        linear_head(parts["model"], "procedure=dfr")
        need = [(splits.val, 2, "validation")] if self.on == "val" else [(splits.val, 1, "validation"),
                                                                         (splits.train, 1, "training")]
        for split, least, name in need:
            counts, classes = split.group_counts, split.class_counts
            short = [k for k, n in enumerate(counts) if n < least]
            if short or 0 in classes:
                what = f"group(s) {short}" if short else f"class(es) {[c for c, n in enumerate(classes) if n == 0]}"
                raise ShiftkitError(f"procedure=dfr needs every group and class in the {name} split "
                                    f"({least}+ examples per group); {what} fall short (group counts {counts})")

    def resume(self, state: Dict[str, Any]):
        return resume_point(state, ERM, "procedure=dfr")

    def run(self, job: Job) -> Outcome:
        self.check(job.plain, job.splits, job.parts)  # before the first phase trains, as a sweep checks it
        model = job.parts["model"]
        erm, _ = ordinary_fit(job)
        started = time.perf_counter()
        _, head = linear_head(model, "procedure=dfr")
        feats = {k: features(model, getattr(job.splits, k), job.splits.pipeline, job.device) for k in ("train", "val")}
        seed, classes = job.plain["seed"], job.splits.num_classes
        gen = torch.Generator().manual_seed(seed)
        scores = self.tune(feats, classes, gen, seed)
        chosen = self.Cs[max(range(len(scores)), key=lambda j: (scores[j], -j))]  # the first best, as np.argmax
        W, b, size = self.refit(feats, classes, chosen, gen, seed)
        self.write_head(head, W, b)
        record = self.evaluate(job, model, feats)
        job.write({"phase": RETRAIN, **record})
        result = FitResult(final={k: record[k] for k in ("train", "val", "test")},
                           selected={k: record[k] for k in ("train", "val", "test")}, selected_epoch=1,
                           history=[record], seconds=time.perf_counter() - started, steps=0)
        mean_scores = [[c, s / self.tune_retrains] for c, s in zip(self.Cs, scores, strict=True)]
        extra = {"chosen_C": chosen, "C_scores": mean_scores, "balanced_size": size,
                 "retrains": self.retrains or RETRAINS[self.on], "erm": summary(erm),
                 "val_in_retraining": self.on == "val"}
        return Outcome(result, model, extra)

    @staticmethod
    def _data(feats, which: str) -> Tuple[Tensor, Tensor, Tensor]:
        """A split's features (float64), labels and groups, on the CPU."""
        split = feats[which]
        return split.x.double().cpu(), split.y.cpu(), split.g.cpu()

    def _scaler(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if not self.standardize:
            return torch.zeros_like(x[0]), torch.ones_like(x[0])
        return standardizer(x)

    def tune(self, feats, classes: int, gen: torch.Generator, seed: int) -> List[float]:
        """Each C's summed worst-group accuracy over ``tune_retrains`` draws (docstring of the class)."""
        xv, yv, gv = self._data(feats, "val")
        scores = [0.0] * len(self.Cs)
        for _ in range(self.tune_retrains):
            if self.on == "val":
                pool, held = halves(gv, gen)
                fit_idx = pool[balanced(gv[pool], gen)]
                x_fit, y_fit = xv[fit_idx], yv[fit_idx]
                mean, scale = self._scaler(x_fit)
                x_held, y_held, g_held = xv[held], yv[held], gv[held]
            else:
                xt, yt, gt = self._data(feats, "train")
                fit_idx = balanced(gt, gen)
                x_fit, y_fit = xt[fit_idx], yt[fit_idx]
                mean, scale = self._scaler(xt)
                x_held, y_held, g_held = xv, yv, gv
            for j, C in enumerate(self.Cs):
                W, b = fit_l1((x_fit - mean) / scale, y_fit, classes, C, self.solver, seed)
                scores[j] += worst_group_acc(predict(W.cpu(), b.cpu(), (x_held - mean) / scale), y_held, g_held)
        return scores

    def refit(self, feats, classes: int, C: float, gen: torch.Generator, seed: int) -> Tuple[Tensor, Tensor, int]:
        """The averaged head over ``retrains`` balanced draws, in the units of the raw features, and the
        draws' size. The scaler is the training split's, as in the released code's final fits."""
        mean, scale = self._scaler(self._data(feats, "train")[0])
        x, y, g = self._data(feats, self.on)
        coefs, intercepts = [], []
        for _ in range(self.retrains or RETRAINS[self.on]):
            idx = balanced(g, gen)
            W, b = fit_l1((x[idx] - mean) / scale, y[idx], classes, C, self.solver, seed)
            coefs.append(W.cpu())
            intercepts.append(b.cpu())
        W, b = torch.stack(coefs).mean(0), torch.stack(intercepts).mean(0)
        return W / scale, b - (W / scale) @ mean, len(idx)

    @staticmethod
    @torch.no_grad()
    def write_head(head, W: Tensor, b: Tensor) -> None:
        """Put the regression into the head: two classes get logits ``(-z/2, z/2)`` for class 1's score z
        (the same probabilities and predictions), more get one row per class."""
        if W.shape[0] == 1:
            W, b = torch.cat([-W / 2, W / 2]), torch.cat([-b / 2, b / 2])
        head.weight.copy_(W.to(head.weight))
        head.bias.copy_(b.to(head.bias))

    def evaluate(self, job: Job, model, feats) -> Dict[str, Any]:
        """The retrained model's evaluation record (its mean loss on the split it was refit on)."""
        counts = job.splits.train.group_counts
        metrics = {name: evaluate_model(model, getattr(job.splits, name).to(job.device), train_group_counts=counts,
                                        pipeline=job.splits.pipeline) for name in ("train", "val", "test")}
        source = feats[self.on]
        head = getattr(model, linear_head(model, "procedure=dfr")[0])
        with torch.no_grad():
            loss = float(F.cross_entropy(head(source.x), source.y))
        return {"epoch": 1, "step": 0, "train_loss": loss, **metrics}
