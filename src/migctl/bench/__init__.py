"""``migctl bench``: measure a user's workload on each MIG size (and the whole GPU), for the serving planner.

* :mod:`migctl.bench.protocol` -- the JSON-line protocol a workload prints (parser, errors per line);
* :mod:`migctl.bench.stats` -- warm-up discarded, median and spread per configuration;
* :mod:`migctl.bench.runner` -- instances through the transactional apply, runs under ``--timeout``,
  the bench journal that restores the node's layout after success, failure or a killed profiler;
* :mod:`migctl.bench.output` -- the ParvaGPU table the serving planner reads, JSON, and the plot.
"""

from __future__ import annotations
