"""ParvaGPU's six SLO sets planned under both SLO readings: as written (``exact``: 71.5 ms) and as ParvaGPU's
own loader reads them (``integer``: atoi, 71 ms). Run: ``python benchmarks/planner/slo_readings.py``
(about 40 s on 2 cores); prints a Markdown table and writes slo_readings.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARVA = HERE.parents[1] / "tests" / "fixtures" / "parvagpu"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from migctl.planner import parse_request, plan
    from migctl.planner.serving import verify_serving

    rows = []
    for k in range(1, 7):
        row: dict[str, object] = {"slo_set": k}
        for reading in ("exact", "integer"):
            req = parse_request({"serving": {"gpu_model": "A100-80GB", "parvagpu": {"dir": str(PARVA), "slo_set": k},
                                             "slo_reading": reading}})
            t = time.perf_counter()
            p = plan(req)
            row[reading] = {"gpus": p.gpu_count, "lower_bound": p.lower_bound, "seconds": round(time.perf_counter() - t, 2),
                            "slo_violations": len(verify_serving(p, req.serving))}
        rows.append(row)
    (HERE / "slo_readings.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| SLO set | GPUs (exact SLOs) | bound | GPUs (integer SLOs, ParvaGPU's reading) | bound |")
    print("|---|---|---|---|---|")
    for r in rows:
        e, i = r["exact"], r["integer"]
        print(f"| {r['slo_set']} | {e['gpus']} | {e['lower_bound']:g} | {i['gpus']} | {i['lower_bound']:g} |")  # type: ignore[index]


if __name__ == "__main__":
    main()
