"""Slice maps: geometry (free, stranded, largest creatable) and the one renderer (ASCII, SVG, CLI)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.observe.conftest import Env

from migctl.catalog import load_model
from migctl.observe.picture import picture, to_ascii, to_svg
from migctl.observe.slices import CiView, GiView, GpuMap


def _map(model: str, gis: list[tuple[str, int, int]], busy: set[int] = frozenset()) -> GpuMap:  # type: ignore[assignment]
    m = load_model(model)
    out = GpuMap(index=0, name=m.name, model=m, mig_current=True, mig_pending=True)
    for name, start, gid in gis:
        p = m.profile(name)
        assert p is not None
        out.gis.append(GiView(gi_id=gid, profile=p.name, profile_id=p.id, start=start, size=p.placement_size,
                              compute_slices=p.slices,
                              cis=(CiView(ci_id=0, slices=p.slices, pids=(1,) if gid in busy else ()),)))
    return out


def test_seven_1g_leave_the_last_memory_slice_stranded() -> None:
    g = _map("H100-80GB", [("1g.10gb", s, 7 + s) for s in range(7)])
    assert g.free_memory_slots() == [7]
    assert g.free_compute_slices() == 0
    assert g.largest_creatable() is None
    assert g.stranded_memory_slots() == [7]
    assert g.stranded_compute_slices() == 0


def test_two_3g_strand_one_compute_slice_and_nothing_fits() -> None:
    g = _map("A100-40GB", [("3g.20gb", 0, 1), ("3g.20gb", 4, 2)])
    assert g.free_memory_slots() == []
    assert g.free_compute_slices() == 1
    assert g.stranded_compute_slices() == 1
    assert g.largest_creatable() is None
    assert "stranded: 1 compute" in to_ascii(picture([g])).splitlines()[0]


def test_largest_creatable_and_free_slices() -> None:
    g = _map("H100-80GB", [("3g.40gb", 4, 2), ("1g.10gb", 0, 7)])
    lp = g.largest_creatable()
    assert lp is not None and lp.name == "2g.20gb"  # at 2:2; 1 and 3 free too
    assert g.free_memory_slots() == [1, 2, 3]
    assert g.stranded_memory_slots() == []
    empty = _map("H100-80GB", [])
    assert empty.largest_creatable() is not None and empty.largest_creatable().name == "7g.80gb"  # type: ignore[union-attr]


def test_ascii_picture_shows_instances_busy_idle_free_and_stranded() -> None:
    g = _map("H100-80GB", [("1g.10gb", s, 7 + s) for s in range(7)], busy={9})
    text = to_ascii(picture([g]))
    lines = text.splitlines()
    mem = next(x for x in lines if x.startswith(" mem"))
    sm = next(x for x in lines if x.startswith(" sm"))
    assert mem.count("1g.10gb") == 7 and "stranded" in mem
    assert "GI9 #" in sm and "GI7 =" in sm
    assert "stranded: 1 memory" in lines[0] and "largest free: none" in lines[0]
    assert "\x1b[" not in text  # plain when not on a terminal


def test_svg_is_wellformed_and_has_every_instance() -> None:
    g = _map("A100-40GB", [("3g.20gb", 0, 1), ("2g.10gb", 4, 5)], busy={1})
    root = ET.fromstring(to_svg([g]))
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "3g.20gb" in texts and "2g.10gb" in texts and "free" in texts
    assert len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) >= 4


def test_gpus_map_cli_plain_when_piped_and_svg(h100x2: Env) -> None:
    h100x2.layout(0, ["3g.40gb", "1g.10gb"])
    r = h100x2.migctl("gpus", "--map", "--svg", str(h100x2.tmp / "map.svg"))
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout
    assert "GPU 0  H100-80GB" in r.stdout and "3g.40gb" in r.stdout and "GPU 1  H100-80GB" in r.stdout
    assert "largest free: 7g.80gb" in r.stdout  # GPU 1 is empty
    ET.parse(h100x2.tmp / "map.svg")
    r = h100x2.migctl("gpus", "--map", "--svg", str(h100x2.tmp / "x.png"))
    assert r.returncode == 2 and r.stderr.startswith("migctl: error: ") and "PNG" in r.stderr


def test_an_idle_mps_server_alone_does_not_make_a_device_busy() -> None:
    """A device whose only process is migctl's MPS server with no client left (``idle_servers``) is free for
    the pictures, top and the exporter; with any other process, lease or sharing holder it is busy."""
    from migctl.observe.slices import CiView, users_text

    idle = CiView(ci_id=0, slices=1, pids=(812,), idle_servers=(812,))
    assert not idle.busy
    assert CiView(ci_id=0, slices=1, pids=(812, 900), idle_servers=(812,)).busy
    assert CiView(ci_id=0, slices=1, pids=(812,), idle_servers=(812,), leased_by=5).busy
    assert CiView(ci_id=0, slices=1, pids=(812,), idle_servers=(812,), shared=("MPS client 7",)).busy
    assert users_text((812, 900), ("MPS client 7",), (812,), "process ") == [
        "812 (idle MPS server)", "process 900", "MPS client 7"]
    assert users_text((), (), (812,)) == ["idle MPS server 812"]  # (NVML does not list it yet)
    g = GpuMap(index=0, name="NVIDIA L4", model=None, pids=(812,), idle_servers=(812,))
    assert not g.whole_busy and GpuMap(index=0, name="NVIDIA L4", model=None, pids=(812, 9), idle_servers=(812,)).whole_busy
