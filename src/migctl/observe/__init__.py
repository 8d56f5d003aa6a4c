"""Seeing the node: slice maps of every GPU, metrics for Prometheus, and the data behind ``migctl top``.

* :mod:`migctl.observe.slices` — pure: a GPU's slice map (who sits on which memory/compute slice, free and
  stranded slices, the largest profile that can still be created), from catalog geometry;
* :mod:`migctl.observe.snapshot` — reads a :class:`migctl.device.Node` into slice maps with per-instance
  memory, activity (NVML GPM where the GPU offers it) and processes;
* :mod:`migctl.observe.state` — leases, queue and apply state, read-only from the state dir;
* :mod:`migctl.observe.picture` — one renderer: styled text segments (terminal / plain ASCII) and SVG;
* :mod:`migctl.observe.exporter` — the Prometheus exporter (prometheus-client).
"""
