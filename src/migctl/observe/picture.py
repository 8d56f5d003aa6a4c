"""One slice-map renderer for every picture: ``gpus --map``, ``plan``, ``apply --dry-run``, ``top`` and SVG.

A picture is a list of lines, each a list of ``(text, style)`` segments. The CLI turns styles into colours
on a terminal (rich); :func:`to_ascii` drops them for pipes; :func:`to_svg` draws the same cells as an
image. For each GPU, one column per memory slice and three rows:

* ``mem``  which GPU instance holds the slice (its profile; ``+``/``-`` mark created/destroyed in a change),
  ``free`` or ``stranded`` (free, but no profile that can still be created would cover it);
* ``sm``   the GI ID and one mark per compute slice of the GI: ``#`` a busy CI's slice, ``=`` an idle CI's,
  ``.`` a slice with no CI;
* ``use``  memory used and engine activity (live), or the workload / what happens to it (plans, changes).

No display library is imported here (the CLI does the colouring).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from migctl.observe.slices import GiView, GpuMap, users_text

Seg = tuple[str, str]
Line = list[Seg]
CELL = 12  # characters per memory slice
LEGEND = ("# busy compute slice  = idle CI slice  . slice without CI  free: unused memory slice  "
          "stranded: free, but no creatable profile covers it")
CHANGE_LEGEND = "+ created  - destroyed  (unmarked: kept)"


def _fmt_mib(mib: int) -> str:
    if mib >= 1024:
        g = mib / 1024
        return f"{g:.1f}G" if g < 100 else f"{g:.0f}G"
    return f"{mib}M"


def _fit(text: str, width: int) -> str:
    if len(text) > width:
        text = text[: max(0, width - 1)] + "~" if width > 1 else text[:width]
    return text.center(width)


def gi_style(gi: GiView) -> str:
    if gi.state in ("created", "destroyed"):
        return gi.state
    return f"gi{gi.gi_id % 6 if gi.gi_id >= 0 else 0}:{'busy' if gi.busy else 'idle'}"


def _cells(g: GpuMap) -> list[tuple[int, int, GiView | None, str]]:
    """(start, size, gi or None, kind) across the memory slices, kind in gi|free|stranded."""
    out: list[tuple[int, int, GiView | None, str]] = []
    stranded = set(g.stranded_memory_slots())
    by_start = {gi.start: gi for gi in g.gis}
    s = 0
    while s < g.memory_slices:
        gi = by_start.get(s)
        if gi is not None:
            out.append((s, gi.size, gi, "gi"))
            s += gi.size
        else:
            out.append((s, 1, None, "stranded" if s in stranded else "free"))
            s += 1
    return out


def _sm_text(gi: GiView) -> str:
    marks = ""
    for ci in gi.cis:
        marks += ("#" if ci.busy else "=") * max(1, ci.slices)
    marks += "." * max(0, gi.compute_slices - len(marks))
    return f"GI{gi.gi_id} {marks}" if gi.gi_id >= 0 else f"new {marks}"


def _use_text(gi: GiView) -> str:
    if gi.label:
        return gi.label
    if gi.state in ("created", "destroyed"):
        return gi.state
    parts = []
    if gi.mem_used_mib is not None:
        parts.append(_fmt_mib(gi.mem_used_mib))
    if gi.activity is not None:
        parts.append(f"{round(100 * gi.activity)}%")
    if not parts:
        parts.append("busy" if gi.busy else "idle")
    return " ".join(parts)


def header(g: GpuMap) -> Line:
    model = g.model.key if g.model else g.name
    title = f"{g.title}: " if g.title else ""
    line: Line = [(f"{title}GPU {g.index}  {model}", "header")]
    if not g.mig_current:  # used whole: its memory and whoever uses it
        what = "  MIG not supported" if g.mig_current is None else "  MIG disabled" + (
            "  (pending enable: reset the GPU)" if g.mig_pending else "")
        line.append((what, "dim"))
        if g.mem_used_mib is not None and g.mem_total_mib is not None:
            line.append((f"  used {_fmt_mib(g.mem_used_mib)}/{_fmt_mib(g.mem_total_mib)}", "dim"))
        if g.whole_busy:
            line.append(("  in use: " + ", ".join(users_text(g.pids, g.shared, g.idle_servers, "process ")), ""))
        elif g.idle_servers:  # (nothing else on it: the next run, worker pass or apply stops the server)
            line.append((f"  idle MPS server {', '.join(map(str, g.idle_servers))} (no client left)", "dim"))
        return line
    pend = "  (pending disable: reset the GPU)" if g.mig_pending is False else ""
    lp = g.largest_creatable()
    stranded_mem, stranded_cmp = len(g.stranded_memory_slots()), g.stranded_compute_slices()
    stranded = ", ".join(x for x in (f"{stranded_mem} memory" if stranded_mem else "",
                                      f"{stranded_cmp} compute" if stranded_cmp else "") if x)
    line += [
        (f"  compute {g.used_compute_slices()}/{g.compute_slices}", ""),
        (f"  memory {g.memory_slices - len(g.free_memory_slots())}/{g.memory_slices} slices", ""),
        (f"  largest free: {lp.name if lp else 'none'}", ""),
        (f"  stranded: {stranded}" if stranded else "", "stranded"),
        (pend, "dim"),
    ]
    if g.mem_used_mib is not None and g.mem_total_mib is not None:
        line.append((f"  used {_fmt_mib(g.mem_used_mib)}/{_fmt_mib(g.mem_total_mib)}", "dim"))
    return [s for s in line if s[0]]


def gpu_lines(g: GpuMap, cell: int = CELL) -> list[Line]:
    """The picture of one GPU: a header, a slice ruler and the mem/sm/use rows."""
    lines: list[Line] = [header(g)]
    if not g.mig_current or g.model is None:
        return lines
    ruler: Line = [("      ", "dim")]
    for s in range(g.memory_slices):
        ruler.append((str(s).center(cell), "dim"))
    lines.append(ruler)
    rows: dict[str, Line] = {"mem": [(" mem  ", "dim")], "sm": [(" sm   ", "dim")], "use": [(" use  ", "dim")]}
    for _start, size, gi, kind in _cells(g):
        inner = cell * size - 2
        if gi is None:
            rows["mem"].append(("[" + _fit(kind, inner) + "]", kind))
            rows["sm"].append(("[" + " " * inner + "]", kind))
            rows["use"].append(("[" + " " * inner + "]", kind))
            continue
        mark = {"created": "+", "destroyed": "-"}.get(gi.state, "")
        st = gi_style(gi)
        rows["mem"].append(("[" + _fit(mark + gi.profile, inner) + "]", st))
        rows["sm"].append(("[" + _fit(_sm_text(gi), inner) + "]", st))
        rows["use"].append(("[" + _fit(_use_text(gi), inner) + "]", st))
    lines += [rows["mem"], rows["sm"], rows["use"]]
    return lines


def picture(maps: Iterable[GpuMap], legend: bool = True, change: bool = False, cell: int = CELL) -> list[Line]:
    out: list[Line] = []
    for g in maps:
        out += gpu_lines(g, cell)
        out.append([])
    if legend:
        out.append([(LEGEND, "dim")])
        if change:
            out.append([(CHANGE_LEGEND, "dim")])
    return out


def to_ascii(lines: Sequence[Line]) -> str:
    return "\n".join("".join(t for t, _ in line).rstrip() for line in lines) + "\n"


# ---------------------------------------------------------------------------------------- maps of changes
def maps_from_node_plan(plan: Any, driver: tuple[int, ...] | None = None) -> list[GpuMap]:
    """Before/after maps of every GPU an apply changes (reconcile's NodePlan): kept, destroyed, created."""
    out: list[GpuMap] = []
    for gp in plan.gpus:
        live = gp.live
        if gp.status == "unmatched" or live.model is None:
            continue
        model = live.model
        keep_ids = {k.id for k in gp.keep}
        changing = gp.status == "change"
        before = GpuMap(index=gp.index, name=live.name, model=model, mig_current=live.mig_current,
                        mig_pending=live.mig_pending, driver=driver, title="before" if changing else gp.status)
        for gi in live.gis:
            before.gis.append(_live_gi(model, gi, "destroyed" if changing and gi.id not in keep_ids else ""))
        out.append(before)
        if not changing:
            continue
        target = gp.target_layout()
        after = GpuMap(index=gp.index, name=live.name, model=model, mig_current=bool(target.get("mig")),
                       mig_pending=bool(target.get("mig")), driver=driver, title="after")
        kept_by_start = {k.start: k for k in gp.keep}
        for t in target.get("gis", []):
            k = kept_by_start.get(t["start"])
            if k is not None and k.profile == t["profile"]:
                kept = _live_gi(model, k, "")
                after.gis.append(GiView(**{**kept.__dict__, "label": "kept"}))
            else:
                p = model.profile(t["profile"], driver)
                after.gis.append(GiView(
                    gi_id=-1, profile=t["profile"], profile_id=p.id if p else -1, start=t["start"], size=t["size"],
                    compute_slices=p.slices if p else 0, state="created",
                    cis=tuple(_ci_from(c) for c in t.get("cis", []))))
        out.append(after)
    return out


def _ci_from(c: dict[str, Any]) -> Any:
    from migctl.observe.slices import CiView

    return CiView(ci_id=-1, slices=int(c.get("size", 1)), profile=str(c.get("profile", "")))


def _live_gi(model: Any, gi: Any, state: str) -> GiView:
    from migctl.observe.slices import CiView

    p = model.profile(gi.profile_id)
    cis = tuple(CiView(ci_id=c.id, slices=c.size, uuid=c.uuid, profile=c.profile, pids=tuple(c.pids))
                for c in gi.cis)
    return GiView(gi_id=gi.id, profile=gi.profile, profile_id=gi.profile_id, start=gi.start, size=gi.size,
                  compute_slices=p.slices if p else gi.size, cis=cis, state=state)


def maps_from_planner(plan: Any) -> list[GpuMap]:
    """Maps of a planner result (one per planned GPU): instance, placement and the workload it serves."""
    from migctl.catalog import load_model
    from migctl.observe.slices import CiView

    out: list[GpuMap] = []
    for g in plan.gpus:
        model = load_model(g.model)
        m = GpuMap(index=g.index, name=model.name, model=model, mig_current=True, mig_pending=True)
        for n, inst in enumerate(sorted(g.instances, key=lambda i: i.start)):
            label = inst.workload or ("(spare)" if not getattr(inst, "busy", False) else "busy")
            if getattr(inst, "kept", False):
                label = "kept " + (inst.workload or "")
            m.gis.append(GiView(gi_id=-1 - n, profile=inst.profile, profile_id=inst.profile_id, start=inst.start,
                                size=inst.size, compute_slices=inst.slices, label=label.strip(),
                                cis=(CiView(ci_id=0, slices=inst.slices, pids=(1,) if getattr(inst, "busy", False)
                                            else ()),)))
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------- SVG
_FILL = {"busy": "#2e9d5b", "idle": "#4a7fc1", "free": "#eeeeee", "stranded": "#f2b8b5",
         "created": "#7fd18b", "destroyed": "#e06666"}
_TEXT = {"free": "#666666", "stranded": "#8b1a1a"}


def to_svg(maps: Sequence[GpuMap], title: str = "migctl slice map", change: bool = False) -> str:
    """The same picture as an SVG document (one block per GPU; colours as on the terminal)."""
    cw, rh, left, top = 112, 18, 52, 34
    blocks: list[str] = []
    y = top
    width = left + cw * max([g.memory_slices for g in maps] + [4]) + 20
    for g in maps:
        head = "".join(t for t, _ in header(g))
        blocks.append(f'<text x="8" y="{y}" class="h">{escape(head)}</text>')
        y += 8
        if g.mig_current and g.model is not None:
            for s in range(g.memory_slices):
                blocks.append(f'<text x="{left + s * cw + cw / 2}" y="{y + 10}" class="r">{s}</text>')
            y += 14
            for label, off in (("mem", 0), ("sm", 1), ("use", 2)):
                blocks.append(f'<text x="8" y="{y + off * rh + 13}" class="r l">{label}</text>')
            for start, size, gi, kind in _cells(g):
                x = left + start * cw
                w = size * cw - 4
                if gi is None:
                    fill, color, texts = _FILL[kind], _TEXT[kind], [kind, "", ""]
                    style = kind
                else:
                    style = gi_style(gi)
                    key = style if style in _FILL else ("busy" if gi.busy else "idle")
                    fill, color = _FILL[key], "#ffffff"
                    mark = {"created": "+", "destroyed": "-"}.get(gi.state, "")
                    texts = [mark + gi.profile, _sm_text(gi), _use_text(gi)]
                blocks.append(f'<rect x="{x + 2}" y="{y}" width="{w}" height="{3 * rh}" rx="4" fill="{fill}" '
                              f'stroke="#333333" stroke-width="1"><title>{escape(" / ".join(t for t in texts if t))}'
                              f'</title></rect>')
                for k, t in enumerate(texts):
                    if t:
                        blocks.append(f'<text x="{x + 2 + w / 2}" y="{y + k * rh + 13}" class="c" '
                                      f'fill="{color}">{escape(t)}</text>')
            y += 3 * rh
        y += 30
    legend = LEGEND + ("   " + CHANGE_LEGEND if change else "")
    blocks.append(f'<text x="8" y="{y}" class="r l">{escape(legend)}</text>')
    height = y + 16
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans Mono, monospace" font-size="12">\n'
            f'<title>{escape(title)}</title>\n'
            '<style>.h{font-weight:bold;font-size:13px}.r{fill:#555555;text-anchor:middle}.l{text-anchor:start}'
            '.c{text-anchor:middle}</style>\n'
            f'<rect width="100%" height="100%" fill="#ffffff"/>\n' + "\n".join(blocks) + "\n</svg>\n")
