"""AutoBalance (docs/METHODS.md#autobalance-algorithm, docs/METHODS.md#protocol-autobalance): search the
loss's parameters on train/validation, then retrain a fresh model with them fixed."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import distributed, objectives, optim
from ..autobalance import DEFAULT_UPPER, check_loss, check_search, resume_point, search_and_retrain
from ..errors import ShiftkitError
from . import Job, Outcome, Procedure, register


@register("autobalance")
class AutoBalance(Procedure):
    """AutoBalance's bilevel search, then retraining (options ``procedure.<option>``).

    The loss's learnable parameters (``loss=autobalance``) are tuned on ``objective`` (``balanced_ce``,
    ``deo_mix``, ``group_balanced_ce``; options under ``objective_options``) from ``start_epoch`` (default
    40% of ``train.epochs``), every ``every`` steps with ``batches`` train and validation batches, a
    Neumann series of ``terms`` terms and step ``step`` whose Hessian uses the first ``curvature_batches``
    train batches (default 1) and which stops at its first growing term unless ``stop_on_growth`` is
    false, SGD at ``upper_lr``; then a fresh model is retrained on ``retrain_on`` (``train+val``, or
    ``train``) with them fixed for ``retrain_epochs`` (default ``train.epochs``), clusters of classes
    expanded by linear interpolation unless ``interpolate_clusters`` is false. A learned augmentation
    (``augment=policy``, docs/METHODS.md#augment-search) joins α, its logits updated by Adam at
    ``augment_lr`` (default 0.001, MADAO's), and is recorded in ``run.json`` (``augment``) and ``augment.png``.
    The retraining's metrics are the run's; the search's, the learned α and its history go into ``run.json`` too, and
    ``alpha.png`` plots the history. ``metrics.jsonl`` lines carry ``"phase": "search"`` or
    ``"retrain"``; a stopped run resumes in the phase it was stopped in.
    """

    alone = "an AutoBalance search tunes each seed's loss on its own"
    takes_augment = True

    def __init__(self, objective: str = "balanced_ce", objective_options: Mapping[str, Any] = MappingProxyType({}),
                 start_epoch: Optional[int] = None, every: int = 20, batches: int = 10, terms: int = 5,
                 step: float = 1.0, curvature_batches: Optional[int] = 1, stop_on_growth: bool = True,
                 upper_lr: float = 0.01, retrain_epochs: Optional[int] = None, retrain_on: str = "train+val",
                 interpolate_clusters: bool = True, augment_lr: float = 1e-3):
        self.options = dict(objective=objective, objective_options=dict(objective_options),
                            start_epoch=start_epoch, every=every, batches=batches, terms=terms, step=step,
                            curvature_batches=curvature_batches, stop_on_growth=stop_on_growth, augment_lr=augment_lr)
        self.upper_lr, self.retrain_epochs, self.retrain_on = upper_lr, retrain_epochs, retrain_on
        self.interpolate_clusters = interpolate_clusters

    def validate(self, plain: Dict[str, Any]) -> None:
        if plain["weighting"]["name"] != "erm" or plain["sampler"]["name"] != "none":
            raise ShiftkitError(
                "procedure=autobalance trains with weighting=erm and sampler=none (the search reweights through"
                f" the loss); got weighting={plain['weighting']['name']}, sampler={plain['sampler']['name']}"
            )
        o = self.options
        check_search(epochs=plain["train"]["epochs"], start_epoch=o["start_epoch"], every=o["every"],
                     batches=o["batches"], terms=o["terms"], step=o["step"],
                     curvature_batches=o["curvature_batches"], prefix="procedure.")
        for key, value in (("upper_lr", self.upper_lr), ("augment_lr", o["augment_lr"])):
            if not value > 0:
                raise ShiftkitError(f"procedure.{key} must be > 0, got {value}")
        if self.retrain_on not in ("train+val", "train"):
            raise ShiftkitError(f"procedure.retrain_on must be 'train+val' or 'train', got '{self.retrain_on}'")
        if self.retrain_epochs is not None and self.retrain_epochs < 1:
            raise ShiftkitError(
                f"procedure.retrain_epochs must be >= 1 (or unset: train.epochs), got {self.retrain_epochs}")
        objectives.OBJECTIVES.get(o["objective"])

    def check(self, plain: Dict[str, Any], splits, parts: Dict[str, Any]) -> None:
        check_loss(parts["loss"], where=f"procedure=autobalance: loss={plain['loss']['name']}", augment=parts.get("augment"))
        name = self.options["objective"]
        try:
            objective = objectives.build(name, num_classes=splits.num_classes, num_groups=splits.num_groups,
                                         **self.options["objective_options"])
            objective.validate(splits.val.y, splits.val.g)
        except ShiftkitError as exc:
            raise ShiftkitError(f"procedure.objective={name}: {exc}") from None

    def epochs(self, plain: Dict[str, Any]) -> int:
        epochs = plain["train"]["epochs"]
        return epochs + (self.retrain_epochs or epochs)

    def resume(self, state: Dict[str, Any]) -> Tuple[Dict[str, Any], List[List[dict]]]:
        phase, epoch, history = resume_point(state)
        return {"resumed_from_epoch": epoch, "resumed_from_phase": phase}, [history]

    def run(self, job: Job) -> Outcome:
        train = dict(job.plain["train"])
        epochs = train.pop("epochs")
        state = job.checkpoint.state if job.checkpoint is not None else None
        phase = {"name": state["phase"] if state is not None else "search"}

        def tagged(record: dict) -> None:
            job.write({"phase": phase["name"], **record})
            if phase["name"] == "search" and record["epoch"] == epochs:
                phase["name"] = "retrain"

        found = search_and_retrain(
            job.make_model, job.splits, job.parts["loss"], job.parts["optim"],
            search_epochs=epochs, retrain_epochs=self.retrain_epochs or epochs,
            batch_size=train.pop("batch_size"), seed=job.plain["seed"], device=job.device,
            search_options={**self.options, "upper": optim.build("sgd", **{**DEFAULT_UPPER, "lr": self.upper_lr})},
            fit_options={**train, "on_eval": tagged, "probe": job.probe}, retrain_on=self.retrain_on,
            interpolate_clusters=self.interpolate_clusters, checkpoint=job.checkpoint, augment=job.parts.get("augment"),
        )
        extra = {
            "search": {"final": found.search.final, "selected": found.search.selected, "seconds": found.search.seconds},
            "alpha": found.alpha,
            "alpha_history": found.history,
        }
        if found.augment is not None:
            extra["augment"] = found.augment
        if job.out is not None and distributed.is_primary():
            from ..plots import plot_alpha, plot_policy

            plot_alpha(found.history, job.out / "alpha.png")
            if found.augment is not None and found.augment["learned"]:
                plot_policy(found.augment, job.out / "augment.png")
        return Outcome(found.retrain, found.model, extra)
