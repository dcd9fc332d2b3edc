"""The default procedure: one fit of the configured model, loss, weighting and sampler."""

from __future__ import annotations

from . import Job, Outcome, Procedure, register


@register("plain")
class Plain(Procedure):
    """Train once (docs/METHODS.md#one-loop); the seeds of a sweep may train as one vectorized ensemble."""

    alone = None

    def run(self, job: Job) -> Outcome:
        return Outcome(job.fit(), job.parts["model"])
