"""The default procedure: one fit of the configured model, loss, weighting and sampler."""

from __future__ import annotations

from typing import Any, Dict

from ..errors import ShiftkitError
from . import Job, Outcome, Procedure, register


@register("plain")
class Plain(Procedure):
    """Train once (docs/METHODS.md#one-loop); the seeds of a sweep may train as one vectorized ensemble."""

    alone = None
    takes_augment = True

    def validate(self, plain: Dict[str, Any]) -> None:
        if (plain.get("augment") or {}).get("learn"):
            raise ShiftkitError("augment.learn=true is learned by procedure=autobalance; with procedure=plain "
                                "set augment.learn=false (a fixed policy)")

    def run(self, job: Job) -> Outcome:
        return Outcome(job.fit(), job.parts["model"])
