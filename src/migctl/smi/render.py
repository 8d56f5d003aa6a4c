"""nvidia-smi's tables and messages, to the character.

Pure functions from plain row data (dataclasses below) to text. The exact widths come from real
transcripts (docs/smi.md lists them); where a table's layout changed between driver branches, the
renderer takes a ``wide`` flag chosen by :func:`layout_for` from the driver version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migctl.catalog import Placement

# ------------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class Layout:
    """Which table layout a driver version prints (see docs/smi.md for the evidence and thresholds)."""

    summary_wide: bool  # default ``nvidia-smi`` table (and its MIG devices / processes tables): 91 vs 89 columns
    mig_wide: bool  # ``mig -lgip`` / ``-lgi``: Name column 2 wider
    summary_old: bool = False  # the 79-column default table of drivers before 530
    mig_header_new: bool = True  # "MIG devices:" column headers of 560+ ("Shared" centred, "ENC  DEC  OFA  JPG")
    proc_pid_wide: bool = True  # "Processes:" PID column of 570+ (6 wider, process name 6 narrower)
    banner_plus: bool = False  # the rule under the version banner drawn "+---+" (nvidia-smi 580+), not "|---+"


def driver_major(version: str) -> int:
    """``"545.23.08"`` -> 545 (0 when unparsable)."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


# Confirmed: 545.23.08 narrow (seed 003); 550.54.14, 550.127.05, 560.35.03 and 570.169 wide summary tables.
SUMMARY_WIDE_FROM = 550
# Confirmed: 545.23.08 and 560.35.03 narrow (seed 003, capture h100-nvl-r560-azure), 570.169 and 610.43.02 wide.
MIG_WIDE_FROM = 570
# 79-column default table: 450.80.02 and 515.86.01 (captures); 89 columns on 535.183.01 (capture). The
# threshold 530 is from issue 8 (captures its filer saw); 516-529 is UNCONFIRMED.
SUMMARY_OLD_BEFORE = 530
# "MIG devices:" headers: older form on 545.23.08 and 550.54.14, newer on 560.35.03 and 570.169 (captures).
MIG_HEADER_NEW_FROM = 560
# "Processes:" header: 8-wide PID column on 550.54.14 and 560.35.03, 14-wide on 570.169 (captures).
PROC_PID_WIDE_FROM = 570
# The rule under the version banner: "|---...---|" up to nvidia-smi 575.64.05, "+---...---+" from 580.65.05 on
# (public tables idx:47444754202 and idx:39347859127; 580.82.07, 580.105.08, 580.126.09 and 580.159.03 likewise;
# our own H200 capture on 580.159.04). The nvidia-smi binary decides (a 575.57.08 nvidia-smi on a 580.82.07 driver
# drew "|", idx:13052082563); migctl answers for the driver's own nvidia-smi.
BANNER_PLUS_FROM = 580


def layout_for(driver_version: str) -> Layout:
    """The table layout nvidia-smi of this driver version prints."""
    major = driver_major(driver_version)
    return Layout(
        summary_wide=major >= SUMMARY_WIDE_FROM,
        mig_wide=major >= MIG_WIDE_FROM,
        summary_old=major < SUMMARY_OLD_BEFORE,
        mig_header_new=major >= MIG_HEADER_NEW_FROM,
        proc_pid_wide=major >= PROC_PID_WIDE_FROM,
        banner_plus=major >= BANNER_PLUS_FROM,
    )


def _rule(width: int, ch: str = "-") -> str:
    """``+----+`` (or ``|====|`` under column headers)."""
    end = "|" if ch == "=" else "+"
    return end + ch * (width - 2) + end


def _boxed(text: str, width: int) -> str:
    return "| " + text.ljust(width - 4) + " |"


# ------------------------------------------------------------------------------------------ -L


def list_gpu_line(index: int, name: str, uuid: str) -> str:
    """``GPU 0: NVIDIA A30 (UUID: GPU-...)``."""
    return f"GPU {index}: {name} (UUID: {uuid})"


def list_mig_line(profile_name: str, dev_index: int, uuid: str) -> str:
    """``  MIG 2g.12gb     Device  0: (UUID: MIG-...)`` (``%-15s Device %2d``)."""
    return f"  {'MIG ' + profile_name:<15} Device {dev_index:2d}: (UUID: {uuid})"


# ------------------------------------------------------------------------------------------ -lgip


@dataclass(frozen=True)
class GIProfileRow:
    gpu: int
    name: str  # without "MIG "
    profile_id: int
    free: int
    total: int
    memory_gib: float
    p2p: bool
    sms: int
    dec: int
    enc: int
    ce: int
    jpeg: int
    ofa: int


def lgip_table(rows: Sequence[GIProfileRow], wide: bool) -> str:
    """``nvidia-smi mig -lgip``: 79 columns, or 81 on wide drivers (Name column 2 wider)."""
    pad = 2 if wide else 0
    width = 79 + pad
    name_w = 18 + pad
    out = [
        _rule(width),
        _boxed("GPU instance profiles:", width),
        "| GPU   Name" + " " * (13 + pad) + "ID    Instances   Memory     P2P    SM    DEC   ENC  |",
        "|" + " " * (30 + pad) + "Free/Total   GiB              CE    JPEG  OFA  |",
        _rule(width, "="),
    ]
    for r in rows:
        name = f"MIG {r.name}"
        first = (
            f"|{r.gpu:4d}  {name:<{name_w}}{r.profile_id:2d}     {f'{r.free}/{r.total}':<11}"
            f"{f'{r.memory_gib:.2f}':<11}{'Yes' if r.p2p else 'No':<7}{r.sms:<7}{r.dec:<6}{r.enc:<4}|"
        )
        second = "|" + " " * (61 + pad) + f"{r.ce:<6}{r.jpeg:<6}{r.ofa:<4}|"
        out += [first, second, _rule(width)]
    return "\n".join(out)


def lgipp_line(gpu: int, profile_id: int, placements: Sequence[Placement]) -> str:
    """``GPU  0 Profile ID 14 Placements: {0,1,2,3}:1`` (``Placement :`` when there is one)."""
    starts = ",".join(str(p.start) for p in placements)
    size = placements[0].size if placements else 0
    word = "Placements:" if len(placements) > 1 else "Placement :"
    return f"GPU {gpu:2d} Profile ID {profile_id:2d} {word} {{{starts}}}:{size}"


# ------------------------------------------------------------------------------------------ -lgi


@dataclass(frozen=True)
class GIRow:
    gpu: int
    name: str
    profile_id: int
    gi_id: int
    placement: Placement


def lgi_table(rows: Sequence[GIRow], wide: bool) -> str:
    """``nvidia-smi mig -lgi``: 57 columns, or 59 on wide drivers."""
    pad = 2 if wide else 0
    width = 57 + pad
    out = [
        _rule(width),
        _boxed("GPU instances:", width),
        "| GPU   Name" + " " * (13 + pad) + "Profile  Instance   Placement  |",
        "|" + " " * (26 + pad) + "ID       ID       Start:Size |",
        _rule(width, "="),
    ]
    for r in rows:
        name = f"MIG {r.name}"
        out.append(
            f"|{r.gpu:4d}  {name:<{17 + pad}}{r.profile_id:5d}{r.gi_id:9d}"
            f"{r.placement.start:>11}:{r.placement.size:<6}|"
        )
        out.append(_rule(width))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ -lcip


@dataclass(frozen=True)
class CIProfileRow:
    gpu: int
    gi_id: int
    name: str
    profile_id: int
    is_default: bool
    free: int
    total: int
    sms: int
    dec: int
    enc: int
    ofa: int
    ce: int
    jpeg: int


def lcip_table(rows: Sequence[CIProfileRow]) -> str:
    """``nvidia-smi mig -lcip``: 88 columns; ``*`` marks each GI's default CI profile."""
    width = 88
    out = [
        _rule(width),
        _boxed("Compute instance profiles:", width),
        "| GPU     GPU       Name             Profile  Instances   Exclusive       Shared       |",
        "|       Instance                       ID     Free/Total     SM       DEC   ENC   OFA  |",
        "|         ID                                                          CE    JPEG       |",
        _rule(width, "="),
    ]
    for r in rows:
        name = f"MIG {r.name}"
        pid = f"{r.profile_id:2d}{'*' if r.is_default else ' '}"
        out.append(
            f"|{r.gpu:4d}{r.gi_id:7d}       {name:<20}{pid}     {f'{r.free}/{r.total}':<14}"
            f"{r.sms:<10}{r.dec:<6}{r.enc:<6}{r.ofa:<4}|"
        )
        out.append("|" + " " * 70 + f"{r.ce:<6}{r.jpeg:<6}" + " " * 4 + "|")
        out.append(_rule(width))
    return "\n".join(out)


def lcipp_line(gpu: int, gi_id: int, profile_id: int, placements: Sequence[Placement]) -> str:
    """``-lcipp``: same shape as ``-lgipp`` with the GI added (format UNCONFIRMED, see docs/smi.md)."""
    starts = ",".join(str(p.start) for p in placements)
    size = placements[0].size if placements else 0
    word = "Placements:" if len(placements) > 1 else "Placement :"
    return f"GPU {gpu:2d} GI {gi_id:2d} Profile ID {profile_id:2d} {word} {{{starts}}}:{size}"


# ------------------------------------------------------------------------------------------ -lci


@dataclass(frozen=True)
class CIRow:
    gpu: int
    gi_id: int
    name: str
    profile_id: int
    ci_id: int
    placement: Placement


def lci_table(rows: Sequence[CIRow]) -> str:
    """``nvidia-smi mig -lci``: 70 columns (the driver-545 layout, with Placement)."""
    width = 70
    out = [
        _rule(width),
        _boxed("Compute instances:", width),
        "| GPU     GPU       Name             Profile   Instance   Placement  |",
        "|       Instance                       ID        ID       Start:Size |",
        "|         ID                                                         |",
        _rule(width, "="),
    ]
    for r in rows:
        name = f"MIG {r.name}"
        out.append(
            f"|{r.gpu:4d}{r.gi_id:7d}       {name:<18}{r.profile_id:4d}{r.ci_id:10d}"
            f"{r.placement.start:>11}:{r.placement.size:<6}|"
        )
        out.append(_rule(width))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ messages


def created_gi(gi_id: int, gpu: int, profile_name: str, profile_id: int) -> str:
    return f"Successfully created GPU instance ID {gi_id:2d} on GPU {gpu:2d} using profile MIG {profile_name} (ID {profile_id:2d})"


def created_ci(ci_id: int, gpu: int, gi_id: int, profile_name: str, profile_id: int) -> str:
    return (
        f"Successfully created compute instance ID {ci_id:2d} on GPU {gpu:2d} GPU instance ID {gi_id:2d} "
        f"using profile MIG {profile_name} (ID {profile_id:2d})"
    )


def destroyed_ci(ci_id: int, gpu: int, gi_id: int) -> str:
    return f"Successfully destroyed compute instance ID {ci_id:2d} from GPU {gpu:2d} GPU instance ID {gi_id:2d}"


def destroyed_gi(gi_id: int, gpu: int) -> str:
    return f"Successfully destroyed GPU instance ID {gi_id:2d} from GPU {gpu:2d}"


# ------------------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class GpuSummary:
    """One GPU's three lines of the default ``nvidia-smi`` table (values already formatted)."""

    index: int
    name: str
    persistence: str  # "On" / "Off"
    bus_id: str
    display: str  # "On" / "Off"
    ecc: str  # "0", "On" (MIG mode), "N/A"
    fan: str  # "N/A" or "30%"
    temp: str  # "28C" or "N/A"
    perf: str  # "P0"
    power: str  # "33W" or "N/A"
    power_cap: str  # "165W" or "N/A"
    mem_used_mib: int | None
    mem_total_mib: int | None
    util: str  # "0%" or "N/A"
    compute_mode: str  # "Default"
    mig_mode: str  # "Enabled" / "Disabled" / "N/A"


def summary_header(driver: str, cuda: str, wide: bool, old: bool = False, plus: bool = False) -> list[str]:
    """The version banner and column headers of the default table (``old``: the 79-column one before 530)."""
    if old:
        return [
            _rule(79),
            f"| NVIDIA-SMI {driver:<13}Driver Version: {driver:<13}CUDA Version: {cuda:<9}|",
            "|-------------------------------+----------------------+----------------------+",
            "| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |",
            "| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |",
            "|                               |                      |               MIG M. |",
            "|===============================+======================+======================|",
        ]
    width = 91 if wide else 89
    if wide:
        banner = f"| NVIDIA-SMI {driver:<22} Driver Version: {driver:<14} CUDA Version: {cuda:<9}|"
        mid = "|-----------------------------------------+------------------------+----------------------+"
        h1 = "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |"
        h2 = "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |"
        h3 = "|                                         |                        |               MIG M. |"
        eq = "|=========================================+========================+======================|"
    else:
        banner = f"| NVIDIA-SMI {driver:<22} Driver Version: {driver:<12} CUDA Version: {cuda:<9}|"
        mid = "|-----------------------------------------+----------------------+----------------------+"
        h1 = "| GPU  Name                 Persistence-M | Bus-Id        Disp.A | Volatile Uncorr. ECC |"
        h2 = "| Fan  Temp   Perf          Pwr:Usage/Cap |         Memory-Usage | GPU-Util  Compute M. |"
        h3 = "|                                         |                      |               MIG M. |"
        eq = "|=========================================+======================+======================|"
    if plus:
        mid = "+" + mid[1:-1] + "+"
    return [_rule(width), banner.ljust(width - 1)[: width - 1] + "|", mid, h1, h2, h3, eq]


def _name_cell(name: str) -> str:
    """GPU names longer than the column are cut with ``...`` as nvidia-smi does."""
    return name if len(name) <= 31 else name[:28] + "..."


def _summary_gpu_old(g: GpuSummary) -> list[str]:
    """A GPU's lines in the 79-column table: name cut to 18 characters (``NVIDIA A100 80G...``)."""
    name = g.name if len(g.name) <= 18 else g.name[:15] + "..."
    mem = "N/A" if g.mem_used_mib is None or g.mem_total_mib is None else f"{g.mem_used_mib}MiB / {g.mem_total_mib}MiB"
    return [
        f"|{g.index:4d}  {name:<18}{g.persistence:>5}  | {g.bus_id} {g.display:>3} |{g.ecc:>21} |",
        f"|{g.fan:>4}  {g.temp:>4}    {g.perf:<2}{g.power:>7} / {g.power_cap:>4} |{mem:>21} |{g.util:>8}{g.compute_mode:>13} |",
        f"|{' ' * 31}|{' ' * 22}|{g.mig_mode:>21} |",
        "+-------------------------------+----------------------+----------------------+",
    ]


def summary_gpu(g: GpuSummary, wide: bool, old: bool = False) -> list[str]:
    """A GPU's three lines plus the rule under them."""
    if old:
        return _summary_gpu_old(g)
    left1 = f"{g.index:4d}  {_name_cell(g.name):<31}{g.persistence:<3} "
    power = f"{g.power} / {g.power_cap:>5}" if wide else f"{g.power} / {g.power_cap}"
    left2 = f"{g.fan:>4}  {g.temp:>4}    {g.perf:<2}" + f"{power:>24} "
    left3 = " " * 41
    if g.mem_used_mib is None or g.mem_total_mib is None:
        mem = "N/A"
    elif wide:
        mem = f"{g.mem_used_mib}MiB / {g.mem_total_mib:>6}MiB"
    else:
        mem = f"{g.mem_used_mib}MiB / {g.mem_total_mib}MiB"
    if wide:
        mid1 = f"   {g.bus_id} {g.display:>3} "
        mid2 = f"{mem:>23} "
        mid3 = " " * 24
    else:
        mid1 = f" {g.bus_id} {g.display:>3} "
        mid2 = f"{mem:>21} "
        mid3 = " " * 22
    right1 = f"{g.ecc:>21} "
    right2 = f"{g.util:>8}{g.compute_mode:>13} "
    right3 = f"{g.mig_mode:>21} "
    rule = "+-----------------------------------------+" + "-" * len(mid1) + "+----------------------+"
    return [
        f"|{left1}|{mid1}|{right1}|",
        f"|{left2}|{mid2}|{right2}|",
        f"|{left3}|{mid3}|{right3}|",
        rule,
    ]


@dataclass(frozen=True)
class MigDeviceRow:
    """One MIG device of the "MIG devices:" table; memory is shown on the first CI of each GI only."""

    gpu: int
    gi_id: int
    ci_id: int
    dev: int
    first_in_gi: bool
    last_in_gi: bool
    mem_used_mib: int | None
    mem_total_mib: int | None
    bar1_used_mib: int | None
    bar1_total_mib: int | None
    sms: int
    ecc: str
    ce: int
    enc: int
    dec: int
    ofa: int
    jpeg: int


def _mem_pair(used: int | None, total: int | None, used_w: int, total_w: int) -> str:
    if used is None or total is None:
        return "N/A".rjust(used_w + 3 + 3 + total_w + 3)
    return f"{used:>{used_w}}MiB / {total:>{total_w}}MiB"


def _mig_devices_old(rows: Sequence[MigDeviceRow]) -> list[str]:
    """The 79-column "MIG devices:" table of drivers before 530 (515.86.01 capture)."""
    sep_full = "+------------------+----------------------+-----------+-----------------------+"
    sep_ci = "+------------------+                      +-----------+-----------------------+"
    out = [
        _rule(79),
        _boxed("MIG devices:", 79),
        sep_full,
        "| GPU  GI  CI  MIG |         Memory-Usage |        Vol|         Shared        |",
        "|      ID  ID  Dev |           BAR1-Usage | SM     Unc| CE  ENC  DEC  OFA  JPG|",
        "|                  |                      |        ECC|                       |",
        "|==================+======================+===========+=======================|",
    ]
    if not rows:
        return out + [_boxed(" No MIG devices found", 79), _rule(79)]
    for r in rows:
        ids = f"{r.gpu:3d}  {r.gi_id:3d} {r.ci_id:3d} {r.dev:3d}  "
        if r.first_in_gi:
            mem = _mem_pair(r.mem_used_mib, r.mem_total_mib, 7, 5) + " "
            bar1 = _mem_pair(r.bar1_used_mib, r.bar1_total_mib, 7, 5) + " "
        else:
            mem = bar1 = " " * 22
        out.append(f"|{ids}|{mem}|{r.sms:3d}{r.ecc:>7} |{r.ce:3d}{r.enc:4d}{r.dec:5d}{r.ofa:5d}{r.jpeg:5d} |")
        out.append(f"|{' ' * 18}|{bar1}|{' ' * 11}|{' ' * 23}|")
        out.append(sep_full if r.last_in_gi else sep_ci)
    return out


def mig_devices_table(
    rows: Sequence[MigDeviceRow], wide: bool, old: bool = False, new_header: bool = True
) -> list[str]:
    """The "MIG devices:" table of the default ``nvidia-smi`` output."""
    if old:
        return _mig_devices_old(rows)
    width = 91 if wide else 89
    mem_w = 34 if wide else 32
    sep_full = "+------------------+" + "-" * mem_w + "+-----------+-----------------------+"
    sep_ci = "+------------------+" + " " * mem_w + "+-----------+-----------------------+"
    out = [_rule(width), _boxed("MIG devices:", width), sep_full]
    if wide and new_header:
        out += [
            "| GPU  GI  CI  MIG |                     Memory-Usage |        Vol|        Shared         |",
            "|      ID  ID  Dev |                       BAR1-Usage | SM     Unc| CE ENC  DEC  OFA  JPG |",
            "|                  |                                  |        ECC|                       |",
        ]
    elif wide:  # 550: the wider memory column under the older headers
        out += [
            "| GPU  GI  CI  MIG |                     Memory-Usage |        Vol|      Shared           |",
            "|      ID  ID  Dev |                       BAR1-Usage | SM     Unc| CE ENC DEC OFA JPG    |",
            "|                  |                                  |        ECC|                       |",
        ]
    else:
        out += [
            "| GPU  GI  CI  MIG |                   Memory-Usage |        Vol|      Shared           |",
            "|      ID  ID  Dev |                     BAR1-Usage | SM     Unc| CE ENC DEC OFA JPG    |",
            "|                  |                                |        ECC|                       |",
        ]
    out.append("|==================+" + "=" * mem_w + "+===========+=======================|")
    if not rows:
        out.append(_boxed(" No MIG devices found", width))
        out.append(_rule(width))
        return out
    for r in rows:
        ids = f"{r.gpu:3d}  {r.gi_id:3d} {r.ci_id:3d} {r.dev:3d}  "
        if r.first_in_gi:
            if wide:
                mem = _mem_pair(r.mem_used_mib, r.mem_total_mib, 16, 5) + "    "
                bar1 = _mem_pair(r.bar1_used_mib, r.bar1_total_mib, 18, 5) + "  "
            else:
                mem = _mem_pair(r.mem_used_mib, r.mem_total_mib, 16, 5) + "  "
                bar1 = _mem_pair(r.bar1_used_mib, r.bar1_total_mib, 16, 5) + "  "
        else:
            mem = bar1 = " " * mem_w
        sm = f"{r.sms:3d}{r.ecc:>7} "
        shared = f"{r.ce:3d}{r.enc:4d}{r.dec:5d}{r.ofa:5d}{r.jpeg:5d} "
        out.append(f"|{ids}|{mem}|{sm}|{shared}|")
        out.append(f"|{' ' * 18}|{bar1}|{' ' * 11}|{' ' * 23}|")
        out.append(sep_full if r.last_in_gi else sep_ci)
    return out


@dataclass(frozen=True)
class ProcessRow:
    gpu: int
    gi: int | None
    ci: int | None
    pid: int
    kind: str  # "C", "G", or "M+C" for an MPS client
    name: str
    used_mib: int | None


def processes_table(rows: Sequence[ProcessRow], wide: bool, old: bool = False, wide_pid: bool = True) -> list[str]:
    """The "Processes:" table (layout UNCONFIRMED for process rows, see docs/smi.md)."""
    width = 79 if old else 91 if wide else 89
    if old:
        h1 = "|  GPU   GI   CI        PID   Type   Process name                  GPU Memory |"
        h2 = "|        ID   ID                                                   Usage      |"
        pid_w = 8
    elif wide and not wide_pid:  # 550 / 560
        h1 = "|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |"
        h2 = "|        ID   ID                                                               Usage      |"
        pid_w = 8
    elif wide:
        h1 = "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |"
        h2 = "|        ID   ID                                                               Usage      |"
        pid_w = 14
    else:
        h1 = "|  GPU   GI   CI        PID   Type   Process name                            GPU Memory |"
        h2 = "|        ID   ID                                                             Usage      |"
        pid_w = 8
    out = [_rule(width), _boxed("Processes:", width), h1, h2, _rule(width, "=")]
    if not rows:
        out.append(_boxed(" No running processes found", width))
    for r in sorted(rows, key=lambda r: (r.gpu, r.pid)):  # by PID within a GPU, as the 580.159.04 table was
        gi = "N/A" if r.gi is None else str(r.gi)
        ci = "N/A" if r.ci is None else str(r.ci)
        # Type right-aligned under the header's "Type" ("C", "G", "M+C": a real 580.159.04 table with MPS clients)
        head = f"|{r.gpu:5d}   {gi:>3}  {ci:>3}  {r.pid:>{pid_w}}  {r.kind:>5}   "
        mem = "N/A" if r.used_mib is None else f"{r.used_mib}MiB"
        room = width - len(head) - len(mem) - 3
        name = r.name if len(r.name) <= room else "..." + r.name[-(room - 3):]
        out.append(f"{head}{name:<{room}} {mem} |")
    out.append(_rule(width))
    return out
