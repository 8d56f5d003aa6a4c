"""Live status of a running plan: best objective found, proven bound, gap, elapsed vs the time limit.

Pure bookkeeping (no I/O): the planner updates a :class:`SolveProgress` from its phases and from CP-SAT's
callbacks (a solution callback for each improving solution, ``best_bound_callback`` for each better bound);
a display (``migctl plan`` on a terminal) reads it from another thread.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SolveProgress:
    time_limit_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    phase: str = "setup"
    best: float | None = None
    bound: float | None = None
    solutions: int = 0
    finished: float | None = None

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def gap(self) -> float | None:
        if self.best is None or self.bound is None or self.best <= 0:
            return None
        return max(0.0, (self.best - self.bound) / self.best)

    def improve(self, best: float | None = None, bound: float | None = None) -> None:
        if best is not None and (self.best is None or best < self.best):
            self.best = float(best)
        if bound is not None and (self.bound is None or bound > self.bound):
            self.bound = float(bound)

    def line(self) -> str:
        gap = self.gap()
        best = "-" if self.best is None else f"{self.best:g}"
        bound = "-" if self.bound is None else f"{self.bound:g}"
        return (f"planning [{self.phase}]: best {best}  bound {bound}  gap {'-' if gap is None else f'{100 * gap:.1f}%'}"
                f"  elapsed {self.elapsed():.1f}s / {self.time_limit_s:g}s limit")


def solve(solver: Any, model: Any, progress: SolveProgress | None, phase: str = "CP-SAT") -> Any:
    """``solver.solve(model)``, reporting improving solutions and bounds to ``progress`` when given."""
    if progress is None:
        return solver.solve(model)
    from ortools.sat.python import cp_model

    progress.phase = phase

    class _Cb(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self) -> None:
            progress.solutions += 1
            progress.improve(self.objective_value, self.best_objective_bound)

    with contextlib.suppress(AttributeError, TypeError):  # older OR-Tools have no bound callback
        solver.best_bound_callback = lambda b: progress.improve(bound=b)
    status = solver.solve(model, _Cb())
    with contextlib.suppress(Exception):
        progress.improve(solver.objective_value, solver.best_objective_bound)
    return status
