"""Architecture search as a mixed-integer program (Puzzle §4).

One binary ``x[l, v]`` per (layer, variant); exactly one variant per layer; minimise ``Σ score[l, v]·x[l, v]``
subject to resource budgets ``Σ cost_r[l, v]·x[l, v] ≤ budget_r`` (memory: params + batch × KV; throughput:
``Σ decode runtime ≤ batch·seq / throughput_min``; latency: ``Σ prefill runtime ≤ limit``). Several diverse
solutions come from re-solving with a cut per earlier solution ``y``: ``Σ_l x[l, y_l] ≤ α·L`` (at most a fraction
α of layers may repeat it). A variant missing from a layer has score ``inf`` (its binary is fixed to 0).

``solve`` uses SciPy's ``milp`` (HiGHS); ``brute_force`` enumerates every architecture and exists to check it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Problem:
    scores: np.ndarray  # [L, V]; inf where the variant is not available in that layer
    costs: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [L, V]
    budgets: dict[str, float] = field(default_factory=dict)  # name -> upper bound on Σ cost

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=float)
        if self.scores.ndim != 2:
            raise ValueError("scores must be [layers, variants]")
        for k, v in self.costs.items():
            self.costs[k] = np.asarray(v, dtype=float)
            if self.costs[k].shape != self.scores.shape:
                raise ValueError(f"cost {k!r} has shape {self.costs[k].shape}, scores {self.scores.shape}")
        unknown = set(self.budgets) - set(self.costs)
        if unknown:
            raise ValueError(f"budgets for unknown costs: {sorted(unknown)}")

    def value(self, choice: list[int]) -> float:
        return float(sum(self.scores[layer, v] for layer, v in enumerate(choice)))

    def usage(self, choice: list[int]) -> dict[str, float]:
        return {k: float(sum(c[layer, v] for layer, v in enumerate(choice))) for k, c in self.costs.items()}

    def feasible(self, choice: list[int], tol: float = 1e-9) -> bool:
        if any(not math.isfinite(self.scores[layer, v]) for layer, v in enumerate(choice)):
            return False
        use = self.usage(choice)
        return all(use[k] <= b * (1 + tol) + tol for k, b in self.budgets.items())


def _overlap_ok(choice, previous, alpha: float) -> bool:
    L = len(choice)
    return all(sum(a == b for a, b in zip(choice, p)) <= alpha * L + 1e-9 for p in previous)


def solve(problem: Problem, previous: list[list[int]] | None = None, alpha: float = 0.8,
          time_limit: float | None = None) -> list[int] | None:
    """The best architecture (variant index per layer) under the budgets and diversity cuts; None if infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    L, V = problem.scores.shape
    available = np.isfinite(problem.scores)
    c = np.where(available, problem.scores, 0.0).ravel()
    rows, lo, hi = [], [], []
    one = np.zeros((L, L * V))
    for layer in range(L):
        one[layer, layer * V:(layer + 1) * V] = 1.0
    rows.append(one)
    lo += [1.0] * L
    hi += [1.0] * L
    for name, budget in problem.budgets.items():
        rows.append(np.where(available, problem.costs[name], 0.0).reshape(1, -1))
        lo.append(-np.inf)
        hi.append(float(budget))
    for p in previous or []:
        cut = np.zeros((1, L * V))
        for layer, v in enumerate(p):
            cut[0, layer * V + v] = 1.0
        rows.append(cut)
        lo.append(-np.inf)
        hi.append(math.floor(alpha * L + 1e-9))
    A = np.vstack(rows)
    upper = available.ravel().astype(float)
    options = {"time_limit": time_limit} if time_limit else {}
    res = milp(c, integrality=np.ones(L * V), bounds=Bounds(np.zeros(L * V), upper),
               constraints=LinearConstraint(A, lo, hi), options=options)
    if res.x is None:
        return None
    x = res.x.reshape(L, V)
    return [int(np.argmax(x[layer])) for layer in range(L)]


def diverse_solutions(problem: Problem, k: int, alpha: float = 0.8, time_limit: float | None = None) -> list[list[int]]:
    """Up to ``k`` solutions, each the best one sharing at most ``α·L`` layer choices with every earlier one."""
    out: list[list[int]] = []
    for _ in range(k):
        sol = solve(problem, out, alpha, time_limit)
        if sol is None:
            break
        out.append(sol)
    return out


def brute_force(problem: Problem, previous: list[list[int]] | None = None, alpha: float = 0.8) -> list[int] | None:
    """Exhaustive search (V^L architectures): the reference the MILP is tested against on small instances."""
    L, V = problem.scores.shape
    best, best_val = None, math.inf
    for choice in itertools.product(range(V), repeat=L):
        if not problem.feasible(list(choice)) or not _overlap_ok(choice, previous or [], alpha):
            continue
        val = problem.value(list(choice))
        if val < best_val - 1e-12:
            best, best_val = list(choice), val
    return best
