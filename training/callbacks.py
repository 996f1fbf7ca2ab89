"""Schedules of the recipes as `TrainerCallback`s.

A recipe declares its schedules (`Recipe.schedules`); each becomes one `ScheduleCallback`, which sets one float
attribute of the recipe before every optimizer step, from `state.global_step` alone, so a run resumed from a
checkpoint continues the schedule where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from transformers import TrainerCallback


def linear_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Paper 000 Eq. 12: start + (end - start) * min(step / total, 1)."""
    return start + (end - start) * min(step / max(total_steps, 1), 1.0)


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine annealing from `start` (step 0) to `end` (step >= total): end + (start - end) (1 + cos(pi t / T)) / 2."""
    progress = min(step / max(total_steps, 1), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def anneal_steps(steps: int | None, fraction: float, max_steps: int) -> int:
    """Steps a schedule anneals over: `steps` when set, else `fraction` of the run (at least 1); it then holds."""
    return steps if steps is not None else max(1, round(fraction * max_steps))


class Schedule(NamedTuple):
    """A recipe attribute annealed from `start` to `end` by `function(step, total_steps, start, end)`, then held.

    total_steps: fixed number of steps; None for the run's `max_steps`; a float in (0, 1] for that fraction of it.
    """

    attribute: str
    function: Callable[[int, int, float, float], float]
    start: float
    end: float
    total_steps: int | float | None = None


class ScheduleCallback(TrainerCallback):
    """Set `target.<attribute>` to `schedule(global_step, total_steps, start, end)` before each step.

    total_steps: fixed number; None for the run's `max_steps`; a float in (0, 1] for that fraction of it.
    """

    def __init__(
        self, target, attribute: str, schedule, start: float, end: float, total_steps: int | float | None = None
    ):
        self.target, self.attribute, self.schedule = target, attribute, schedule
        self.start, self.end, self.total_steps = start, end, total_steps

    def value(self, step: int, max_steps: int) -> float:
        total = self.total_steps
        if total is None:
            total = max_steps
        elif isinstance(total, float):
            total = anneal_steps(None, total, max_steps)
        return self.schedule(step, total, self.start, self.end)

    def _apply(self, state) -> None:
        setattr(self.target, self.attribute, self.value(state.global_step, state.max_steps))

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state)


def recipe_callbacks(recipe, args) -> list[ScheduleCallback]:
    """One callback per schedule that `recipe` (a `Recipe`) declares under `args`."""
    return [
        ScheduleCallback(
            recipe, schedule.attribute, schedule.function, schedule.start, schedule.end, schedule.total_steps
        )
        for schedule in recipe.schedules(args)
    ]
