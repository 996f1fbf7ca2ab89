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


class Schedule(NamedTuple):
    """A recipe attribute annealed from `start` to `end` by `function(step, total_steps, start, end)`.

    total_steps: fixed number of steps, or None for the run's `max_steps`.
    """

    attribute: str
    function: Callable[[int, int, float, float], float]
    start: float
    end: float
    total_steps: int | None = None


class ScheduleCallback(TrainerCallback):
    """Set `target.<attribute>` to `schedule(global_step, total_steps, start, end)` before each step.

    total_steps: fixed number, or None for the run's `max_steps`.
    """

    def __init__(self, target, attribute: str, schedule, start: float, end: float, total_steps: int | None = None):
        self.target, self.attribute, self.schedule = target, attribute, schedule
        self.start, self.end, self.total_steps = start, end, total_steps

    def value(self, step: int, max_steps: int) -> float:
        return self.schedule(step, self.total_steps or max_steps, self.start, self.end)

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
