"""Alibaba replays beyond the one of results.md: two traces of the v2023 release on four fleet sizes.

Run: ``nice -n 10 python benchmarks/dynamic/alibaba_cells.py`` (about 12 min on 2 cores). Writes
alibaba_cells.json and alibaba_cells.md next to this file.

results.md replays one Alibaba trace (``openb_pod_list_default``) on one fleet (40 A100-80GB), where migctl
reshaping misses the best baseline's median wait by 82 s. This asks whether that result, and the variants
of variants.md that trade it, hold on other Alibaba cells: the same trace and the authors' resample in which
40% of the GPU tasks share a GPU (``openb_pod_list_gpushare40``, same tasks and times), each on 32, 36, 40
and 44 A100-80GB (40 is results.md's fleet; fewer GPUs, more congestion). Same mapping, simulator and
comparison as variants.py (target metrics against the best of first-fit, best-fit, best-fit in the driver's
order and FGD in the same cell). Every run of this script is reported. The cells, the gang rule and its
thresholds came from exploratory runs on some of these cells (docs/dynamic.md), so these are not held-out
results.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from variants import BASELINES, checks_line, generated, run_and_write, simulated, worse_rows  # noqa: E402

R0 = run.PREVIOUS_POLICY  # the default before 2026-12-04: arrival order, no cap on the starving test
SJF = dataclasses.replace(R0, order="sjf-request")
METHODS = {
    "migctl reshaping (sjf within a request, cap 4 h)": run.RESHAPING,
    "previous default (fifo, no cap, 1 reservation)": R0,
    "no reservations": dataclasses.replace(R0, reserve_after_s=None),
    "order sjf within a request": SJF,
    "gangs starving after 24 h": dataclasses.replace(R0, gang_reserve_after_s=24 * 3600.0),
    "sjf within a request, gangs starving after 12 h": dataclasses.replace(SJF, gang_reserve_after_s=12 * 3600.0),
    "sjf within a request, gangs starving after 24 h": dataclasses.replace(SJF, gang_reserve_after_s=24 * 3600.0),
    "sjf within a request, gangs starving after 36 h": dataclasses.replace(SJF, gang_reserve_after_s=36 * 3600.0),
}
TRACES = ("default", "gpushare40")
FLEETS = (32, 36, 40, 44)
CELLS = [(t, n) for t in TRACES for n in FLEETS]


def _label(trace: str, n: int) -> str:
    return f"{trace}, {n} GPUs"


def _one(trace: str, n: int, name: str) -> dict:
    return simulated([run.A100] * n, run.alibaba(trace), name, BASELINES.get(name) or METHODS[name])


def markdown(res: dict) -> str:
    cells = list(res["cells"])
    lines = [
        "# Alibaba cells: two traces, four fleet sizes",
        "",
        generated(res, "alibaba_cells.py") + " Traces `openb_pod_list_default` (results.md's) and "
        "`openb_pod_list_gpushare40` (the authors' resample: 40% of GPU tasks share a GPU; same tasks and times), "
        f"each on 32, 36, 40 and 44 A100-80GB. Mapping: {run.MAPPING}",
        "",
        "Each cell names the target metrics on which the method is worse than the best of first-fit, best-fit, "
        "best-fit in the driver's order and FGD in that cell (as variants.md); `ok` = none worse. Methods: "
        "migctl reshaping with results.md's settings (start order sjf within a request; a job is starving once "
        "it has waited 1 h and its own limit, or 4 h whatever its limit), then its previous default (arrival "
        "order, starving after max(1 h, its limit), no cap) and variants of that previous default with the "
        "start order or starvation test named (sjf within a "
        "request = arrival order between jobs that ask for different things, shortest limit first among jobs "
        "that ask for the same; gangs starving after T = a gang gets a reservation once it has waited T, "
        "whatever its own limit, instead of max(1 h, its limit)).",
        "",
        *worse_rows(res["cells"], list(METHODS), "method", "cells"),
    ]
    def table(title: str, best: Callable[[str], str], each: Callable[[dict], str]) -> list[str]:
        """A method x cell table whose first row is the best baseline's figure (``best(cell)``)."""
        return (["", title, "", "| method | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells),
                 "| best baseline | " + " | ".join(best(c) for c in cells) + " |"]
                + [f"| {name} | " + " | ".join(each(res["cells"][c][name]) for c in cells) + " |" for name in METHODS])

    def low(c: str, key: str) -> str:
        return run._h(min(res["cells"][c][b][key] for b in BASELINES))

    lines += table("Wait p50 / p95 / longest of each method (the best baseline's first, per metric):",
                   lambda c: f"{low(c, 'wait_p50_s')} / {low(c, 'wait_p95_s')} / {low(c, 'wait_max_s')}",
                   lambda r: f"{run._h(r['wait_p50_s'])} / {run._h(r['wait_p95_s'])} / {run._h(r['wait_max_s'])}")
    lines += table("Allocation (the best baseline's first):",
                   lambda c: f"{100 * max(res['cells'][c][b]['allocation'] for b in BASELINES):.2f}%",
                   lambda r: f"{100 * r['allocation']:.2f}%")
    lines += ["", checks_line(res["cells"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    run.no_options(__doc__, argv)
    return run_and_write("alibaba_cells", "cells", CELLS, list(METHODS), _one, _label, markdown,
                         first=lambda t: t[1])  # the most congested (slowest) first


if __name__ == "__main__":
    raise SystemExit(main())
