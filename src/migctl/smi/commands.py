"""nvidia-smi compatibility mode: run a parsed nvidia-smi command line against a migctl Node.

Every state change goes through the device layer (:mod:`migctl.device`); telemetry for the default table
is read with pynvml directly (``N/A`` where NVML says no). Output goes to one text stream, as
nvidia-smi writes its messages to stdout. The return value is nvidia-smi's exit code (see
:func:`exit_code`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

import pynvml as N

from migctl.inputs import is_digits
from migctl.paths import NODE_LOCK_WAIT_S as LOCK_WAIT_S
from migctl.smi import render as R
from migctl.smi.args import INVALID_COMBINATION, SmiArgs, SmiUsageError, parse

# nvidia-smi(1) "RETURN VALUE": these NVML return codes are passed through; anything else is 255.
_PASSTHROUGH_CODES = {2, 3, 4, 6, 8, 9, 10, 12, 13, 14, 15}
NOT_FOUND = 6
CHANGING = ("mig-mode", "reset", "cgi", "cci", "dci", "dgi")  # the actions run under the node lock


def exit_code(err: BaseException | int) -> int:
    """nvidia-smi's exit status for an NVML error (or an NVML return code)."""
    code = err if isinstance(err, int) else int(getattr(err, "value", 255) or 255)
    return code if code in _PASSTHROUGH_CODES else 255


def nvml_text(err: BaseException) -> str:
    """NVML's error string ("Insufficient Resources", "In use by another client", ...)."""
    return str(err)


class Smi:
    """One nvidia-smi invocation against ``node`` (a :class:`migctl.device.Node`)."""

    def __init__(self, node: Any, out: TextIO, clock: Callable[[], str] | None = None) -> None:
        self.node = node
        self.out = out
        self.clock = clock or (lambda: time.ctime())
        self.layout = R.layout_for(node.driver_version)

    def say(self, line: str = "") -> None:
        self.out.write(line + "\n")

    # ---------------------------------------------------------------- entry
    def run(self, argv: list[str]) -> int:
        """Parse and run; returns the exit code."""
        try:
            args = parse(argv)
        except SmiUsageError as e:
            self.say(str(e))
            return e.exit_code
        if args.help:
            self.say(USAGE)
            return 0
        try:
            gpus = self._select(args.gpu)
        except LookupError:
            self.say("No devices were found")
            return NOT_FOUND
        handler = {
            None: self.summary,
            "list": self.list_gpus,
            "mig-mode": self.mig_mode,
            "persistence": self.persistence,
            "reset": self.reset,
            "query": self.query,
            "query-apps": self.query_apps,
            "lgip": self.lgip,
            "lgipp": self.lgipp,
            "lgi": self.lgi,
            "lcip": self.lcip,
            "lcipp": self.lcipp,
            "lci": self.lci,
            "cgi": self.cgi,
            "cci": self.cci,
            "dci": self.dci,
            "dgi": self.dgi,
        }[args.action]
        if args.action in CHANGING:
            from migctl.paths import node_lock

            # (the lock apply, run and the worker hold while they change instances: never interleaved with them)
            with node_lock(self.node, LOCK_WAIT_S, what=f"migctl smi ({args.action})"):
                return handler(args, gpus)
        return handler(args, gpus)

    def _select(self, spec: str | None) -> list[Any]:
        from migctl.device import DeviceError

        try:
            return self.node.select(spec)
        except DeviceError as e:
            raise LookupError(str(e)) from e

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _mig_enabled(gpu: Any) -> bool:
        try:
            return gpu.mig_mode()[0] == 1
        except N.NVMLError:
            return False

    def _mig_gpus(self, gpus: list[Any], listing: bool = False) -> list[Any] | int:
        """MIG-enabled GPUs among ``gpus``; prints nvidia-smi's message and returns an exit code if none: 0 for a
        listing (nvidia-smi 580.159.04 exited 0 from ``mig -lgi``, ``-lci`` and ``-lcip`` with MIG disabled, our
        H200 capture), NOT_FOUND for a change (UNCONFIRMED)."""
        enabled = [g for g in gpus if self._mig_enabled(g)]
        if enabled:
            return enabled
        capable = [g for g in gpus if g.mig_capable()]
        self.say("No MIG-enabled devices found." if capable else "No MIG-supported devices found.")
        return 0 if listing and capable else NOT_FOUND

    def _profile_gpus(self, gpus: list[Any]) -> list[Any] | int:
        """GPUs whose GI profiles can be listed: MIG enabled, or MIG capable with a driver that answers profile
        info while MIG is off (nvidia-smi 580.159.04 listed an H200's profiles and placements with MIG disabled)."""
        def listable(g: Any) -> bool:
            if self._mig_enabled(g):
                return True
            try:
                return g.mig_capable() and bool(g.profiles())
            except N.NVMLError:
                return False

        found = [g for g in gpus if listable(g)]
        return found if found else self._mig_gpus(gpus, listing=True)

    @staticmethod
    def _gis_in_order(gpu: Any) -> list[Any]:
        """GIs as nvidia-smi lists them: by profile in ``-lgip`` order, then by ID."""
        gis = gpu.gpu_instances()
        order = {p.id: i for i, p in enumerate(gpu.profiles())}
        return sorted(gis, key=lambda g: (order.get(g.profile_id, 99), g.id))

    @staticmethod
    def _pick_gis(gpu: Any, gis: list[Any], wanted: list[int] | None) -> list[Any]:
        if wanted is None:
            return gis
        return [g for g in gis if g.id in wanted]

    # ---------------------------------------------------------------- -L
    def list_gpus(self, args: SmiArgs, gpus: list[Any]) -> int:
        for g in gpus:
            self.say(R.list_gpu_line(g.index, g.name, g.uuid))
            for d in g.mig_devices():
                self.say(R.list_mig_line(d.profile_name, d.index, d.uuid))
        return 0

    # ---------------------------------------------------------------- -mig 0|1
    def mig_mode(self, args: SmiArgs, gpus: list[Any]) -> int:
        """As nvidia-smi; a GPU where migctl holds something the driver cannot see (a lease, an MPS server, a
        time-sliced client: :mod:`migctl.busy`) is answered as an NVML In Use error, since the change would reset
        the GPU and destroy its instances."""
        from migctl.busy import busy_view

        enable = args.mig_mode == 1
        verb, state = ("enable", "Enabled") if enable else ("disable", "Disabled")
        return self._set_mig_mode(gpus, enable, verb, state, busy_view(self.node, gpus=gpus))  # (run() holds the lock)

    def _set_mig_mode(self, gpus: list[Any], enable: bool, verb: str, state: str, view: Any) -> int:
        for g in gpus:
            try:
                if any(h.kind != "process" for h in view.of_gpu(g.index)) and g.mig_mode() != (int(enable),) * 2:
                    raise N.NVMLError(N.NVML_ERROR_IN_USE)
                status = g.set_mig_mode(enable)
            except N.NVMLError as e:
                self.say(f"Unable to {verb} MIG Mode for GPU {g.bus_id}: {nvml_text(e)}")
                self.say("Treating as warning and moving on.")
                continue
            if status == 0:
                self.say(f"{state} MIG Mode for GPU {g.bus_id}")
                if _persistence(g) == 0:
                    self.say()
                    self.say(PERSISTENCE_WARNING.format(bus=g.bus_id))
                continue
            reason = nvml_text(N.NVMLError(status))
            self.say(f"Warning: MIG mode is in pending {verb} state for GPU {g.bus_id}:{reason}")
            if status == N.NVML_ERROR_IN_USE:
                self.say(
                    f"{g.bus_id} is currently being used by one or more other processes (e.g. CUDA application or a "
                    "monitoring application such as another instance of nvidia-smi). Please first kill all processes "
                    "using the device and retry the command or reboot the system to make MIG mode effective."
                )
            else:
                self.say(f"Reboot the system or try nvidia-smi --gpu-reset to make MIG mode effective on GPU {g.bus_id}")
        self.say("All done.")
        return 0

    # ---------------------------------------------------------------- -pm 0|1
    def persistence(self, args: SmiArgs, gpus: list[Any]) -> int:
        """Persistence mode (not MIG state: read and set with NVML directly, as the telemetry is)."""
        want = args.persistence
        word = "Enabled" if want == 1 else "Disabled"
        for g in gpus:
            if _persistence(g) == want:
                self.say(f"Persistence mode is already {word} for GPU {g.bus_id}.")
                continue
            try:
                N.nvmlDeviceSetPersistenceMode(g.handle, want)
            except N.NVMLError as e:
                self.say(f"Unable to set persistence mode for GPU {g.bus_id}: {nvml_text(e)}")  # wording UNCONFIRMED
                return exit_code(e)
            self.say(f"{word} persistence mode for GPU {g.bus_id}.")
        self.say("All done.")
        return 0

    # ---------------------------------------------------------------- --gpu-reset
    def reset(self, args: SmiArgs, gpus: list[Any]) -> int:
        """As nvidia-smi, and a GPU with a lease, MPS server or time-sliced client on one of its instances
        (:mod:`migctl.busy`) is refused as one with a process is: In use."""
        from migctl.busy import busy_view

        failed: list[tuple[Any, BaseException]] = []
        view = busy_view(self.node, gpus=gpus)  # (under the node lock: run() holds it)
        held = {g.index for g in gpus if view.of_gpu(g.index)}
        for g in gpus:
            try:
                if g.index in held:
                    raise N.NVMLError(N.NVML_ERROR_IN_USE)
                g.reset()
            except Exception as e:  # NVMLError or DeviceError (real nvidia-smi's own words)
                failed.append((g, e))
                continue
            self.say(f"GPU {g.bus_id} was successfully reset.")
        if failed:
            self.say("The following GPUs could not be reset:")
            for g, e in failed:
                self.say(f"  GPU {g.bus_id}: {nvml_text(e)}")
            busy = [g for g, e in failed if isinstance(e, N.NVMLError) and getattr(e, "value", 0) == N.NVML_ERROR_IN_USE]
            if busy:
                n = len(busy)
                self.say()
                self.say(
                    f"{n} device{'s are' if n > 1 else ' is'} currently being used by one or more other processes "
                    "(e.g., Fabric Manager, CUDA application, graphics application such as an X server, or a "
                    "monitoring application such as another instance of nvidia-smi). Please first kill all processes "
                    "using this device and all compute applications running in the system."
                )
            first = failed[0][1]
            return exit_code(first) if isinstance(first, N.NVMLError) else 255
        self.say("All done.")
        return 0

    # ---------------------------------------------------------------- --query-gpu
    def _csv_options(self, args: SmiArgs, valid: Any) -> tuple[bool, bool] | None:
        """(header, units) of ``--format=csv,...``; None (after nvidia-smi's line) when a field is not valid."""
        for f in args.query_fields:
            if f not in valid:
                self.say(f'Field "{f}" is not a valid field to query.')
                return None
        return "noheader" not in args.csv_format, "nounits" not in args.csv_format

    def query(self, args: SmiArgs, gpus: list[Any]) -> int:
        opts = self._csv_options(args, _QUERY_FIELDS)
        if opts is None:
            return 2
        header, units = opts
        if header:
            self.say(", ".join(_QUERY_FIELDS[f][0] if units else f for f in args.query_fields))
        for g in gpus:
            self.say(", ".join(_QUERY_FIELDS[f][1](self.node, g, units) for f in args.query_fields))
        return 0

    def query_apps(self, args: SmiArgs, gpus: list[Any]) -> int:
        """``--query-compute-apps``: one row per compute process, in NVML's order (a real 580.159.04 run listed
        the MPS server before its two clients, as NVML did); only the header when there are none."""
        from migctl.smi.telemetry import process_name

        opts = self._csv_options(args, _APP_FIELDS)
        if opts is None:
            return 2
        header, units = opts
        if header:
            self.say(", ".join(_APP_FIELDS[f] + (" [MiB]" if units and f in _APP_MIB else "") for f in args.query_fields))
        for g in gpus:
            try:
                procs = g.processes()
            except N.NVMLError:
                continue
            for p in procs:
                values = {"pid": str(p.pid), "process_name": process_name(p.pid), "gpu_uuid": g.uuid,
                          "gpu_name": g.name, "gpu_bus_id": g.bus_id,
                          "used_memory": f"{p.used_mib} MiB" if units else str(p.used_mib)}
                values["used_gpu_memory"] = values["used_memory"]
                self.say(", ".join(values[f] for f in args.query_fields))
        return 0

    # ---------------------------------------------------------------- mig -lgip / -lgipp
    def lgip(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._profile_gpus(gpus)
        if isinstance(mig, int):
            return mig
        rows = []
        for g in mig:
            for p in g.profiles():
                try:
                    free = g.remaining(p.id)
                except N.NVMLError:
                    free = 0
                rows.append(
                    R.GIProfileRow(
                        gpu=g.index, name=p.name, profile_id=p.id, free=free, total=p.instance_count,
                        memory_gib=p.memory_mib / 1024, p2p=p.p2p, sms=p.sms, dec=p.dec, enc=p.enc,
                        ce=p.ce, jpeg=p.jpeg, ofa=p.ofa,
                    )
                )
        self.say(R.lgip_table(rows, self.layout.mig_wide))
        return 0

    def lgipp(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._profile_gpus(gpus)
        if isinstance(mig, int):
            return mig
        for g in mig:
            for p in g.profiles():
                self.say(R.lgipp_line(g.index, p.id, p.placements))
        return 0

    # ---------------------------------------------------------------- mig -lgi
    def lgi(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus, listing=True)
        if isinstance(mig, int):
            return mig
        rows = []
        for g in mig:
            for gi in self._pick_gis(g, self._gis_in_order(g), args.gi_ids):
                rows.append(R.GIRow(g.index, gi.profile().name, gi.profile_id, gi.id, gi.placement))
        if not rows:
            self.say("No GPU instances found: Not Found")
            return NOT_FOUND
        self.say(R.lgi_table(rows, self.layout.mig_wide))
        return 0

    # ---------------------------------------------------------------- mig -lcip / -lcipp
    def lcip(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus, listing=True)
        if isinstance(mig, int):
            return mig
        rows = []
        for g in mig:
            for gi in self._pick_gis(g, self._gis_in_order(g), args.gi_ids):
                for cp in gi.ci_profiles():
                    try:
                        free = gi.ci_remaining(cp.id)
                    except N.NVMLError:
                        free = 0
                    rows.append(
                        R.CIProfileRow(
                            gpu=g.index, gi_id=gi.id, name=cp.name, profile_id=cp.id, is_default=cp.is_default,
                            free=free, total=cp.instance_count, sms=cp.sms, dec=cp.dec, enc=cp.enc, ofa=cp.ofa,
                            ce=cp.ce, jpeg=cp.jpeg,
                        )
                    )
        if not rows:
            self.say("No GPU instances found: Not Found")
            return NOT_FOUND
        self.say(R.lcip_table(rows))
        return 0

    def lcipp(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus, listing=True)
        if isinstance(mig, int):
            return mig
        found = False
        for g in mig:
            for gi in self._pick_gis(g, self._gis_in_order(g), args.gi_ids):
                for cp in gi.ci_profiles():
                    found = True
                    self.say(R.lcipp_line(g.index, gi.id, cp.id, cp.placements))
        if not found:
            self.say("No GPU instances found: Not Found")
            return NOT_FOUND
        return 0

    # ---------------------------------------------------------------- mig -lci
    def _cis(self, gi: Any, wanted: list[int] | None) -> list[Any]:
        order = {p.id: i for i, p in enumerate(gi.ci_profiles())}
        cis = sorted(gi.compute_instances(), key=lambda c: (order.get(c.profile_id, 99), c.id))
        return cis if wanted is None else [c for c in cis if c.id in wanted]

    def lci(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus, listing=True)
        if isinstance(mig, int):
            return mig
        rows = []
        for g in mig:
            for gi in self._pick_gis(g, self._gis_in_order(g), args.gi_ids):
                names = {p.id: p.name for p in gi.ci_profiles()}
                for ci in self._cis(gi, args.ci_ids):
                    rows.append(R.CIRow(g.index, gi.id, names.get(ci.profile_id, "?"), ci.profile_id, ci.id, ci.placement))
        if not rows:
            self.say("No compute instances found: Not Found")
            return NOT_FOUND
        self.say(R.lci_table(rows))
        return 0

    # ---------------------------------------------------------------- mig -cgi [-C]
    def cgi(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus)
        if isinstance(mig, int):
            return mig
        for g in mig:
            for token in args.profiles:
                prof = g.profile(token)
                try:
                    if prof is None:
                        raise N.NVMLError(N.NVML_ERROR_INVALID_ARGUMENT)
                    gi = g.create_gi(prof.id)
                except N.NVMLError as e:
                    self.say(f"Unable to create a GPU instance on GPU {g.index:2d} using profile {token}: {nvml_text(e)}")
                    self.say(f"Failed to create GPU instances: {nvml_text(e)}")
                    return exit_code(e)
                self.say(R.created_gi(gi.id, g.index, prof.name, prof.id))
                if args.default_ci:
                    rc = self._create_ci(g, gi, None, None)
                    if rc:
                        return rc
        return 0

    def _create_ci(self, g: Any, gi: Any, token: str | None, ci_profiles: list[Any] | None) -> int:
        """Create one CI (the default one when ``token`` is None); prints nvidia-smi's message."""
        profiles = ci_profiles if ci_profiles is not None else gi.ci_profiles()
        if token is None:
            cp = next((p for p in profiles if p.is_default), None)
        else:
            cp = _find_ci_profile(profiles, token)
        try:
            if cp is None:
                raise N.NVMLError(N.NVML_ERROR_INVALID_ARGUMENT)
            ci = gi.create_ci(cp.id)
        except N.NVMLError as e:
            shown = token if token is not None else "default"
            self.say(
                f"Unable to create a compute instance on GPU {g.index:2d} GPU instance ID {gi.id:2d} "
                f"using profile {shown}: {nvml_text(e)}"
            )
            self.say(f"Failed to create compute instances: {nvml_text(e)}")
            return exit_code(e)
        self.say(R.created_ci(ci.id, g.index, gi.id, cp.name, cp.id))
        return 0

    # ---------------------------------------------------------------- mig -cci
    def cci(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus)
        if isinstance(mig, int):
            return mig
        any_gi = False
        for g in mig:
            gis = self._pick_gis(g, sorted(g.gpu_instances(), key=lambda x: x.id), args.gi_ids)
            if args.gi_ids is not None:
                missing = sorted(set(args.gi_ids) - {gi.id for gi in gis})
                if missing:
                    self.say(f"Unable to find GPU instance ID {missing[0]:2d} on GPU {g.index:2d}: Not Found")
                    return NOT_FOUND
            for gi in gis:
                any_gi = True
                profiles = gi.ci_profiles()
                for token in args.profiles or [None]:
                    rc = self._create_ci(g, gi, token, profiles)
                    if rc:
                        return rc
        if not any_gi:
            self.say("No GPU instances found: Not Found")
            return NOT_FOUND
        return 0

    # ---------------------------------------------------------------- mig -dci / -dgi
    def _destroy(self, targets: list[tuple[Any, str, str]], what: str) -> int:
        """Destroy each (instance, failure prefix, success line); nvidia-smi's messages and exit codes.

        An instance that migctl's authority (:mod:`migctl.busy`) says is held, by a lease before its command's
        first CUDA call, an MPS server or a time-sliced client, is answered as the driver answers one with a
        CUDA context: ``In use by another client``. Checked and destroyed under the node lock."""
        from migctl.busy import busy_view

        if not targets:
            self.say(f"No {what} found: Not Found")
            return NOT_FOUND
        first_err: N.NVMLError | None = None
        view = busy_view(self.node)  # (under the node lock: run() holds it)
        for obj, unable, done in targets:
            gi = getattr(obj, "gi", None)
            held = view.of_device(gi.gpu.index, gi.id, obj.id) if gi is not None else view.of_gi(obj.gpu.index, obj.id)
            try:
                if held:
                    raise N.NVMLError(N.NVML_ERROR_IN_USE)
                obj.destroy()
            except N.NVMLError as e:
                self.say(f"{unable}: {nvml_text(e)}")
                first_err = first_err or e
                continue
            self.say(done)
        if first_err is not None:
            self.say(f"Failed to destroy {what}: {nvml_text(first_err)}")
            return exit_code(first_err)
        return 0

    def dci(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus)
        if isinstance(mig, int):
            return mig
        targets = [
            (ci, f"Unable to destroy compute instance ID {ci.id:2d} from GPU {g.index:2d} GPU instance ID {gi.id:2d}",
             R.destroyed_ci(ci.id, g.index, gi.id))
            for g in mig
            for gi in self._pick_gis(g, self._gis_in_order(g), args.gi_ids)
            for ci in sorted(gi.compute_instances(), key=lambda c: c.id)
            if args.ci_ids is None or ci.id in args.ci_ids
        ]
        return self._destroy(targets, "compute instances")

    def dgi(self, args: SmiArgs, gpus: list[Any]) -> int:
        mig = self._mig_gpus(gpus)
        if isinstance(mig, int):
            return mig
        targets = [
            (gi, f"Unable to destroy GPU instance ID {gi.id:2d} from GPU {g.index:2d}", R.destroyed_gi(gi.id, g.index))
            for g in mig
            for gi in self._pick_gis(g, self._gis_in_order(g), args.gi_ids)
        ]
        return self._destroy(targets, "GPU instances")

    # ---------------------------------------------------------------- default table
    def summary(self, args: SmiArgs, gpus: list[Any]) -> int:
        from migctl.smi.telemetry import cuda_version, gpu_summary, mig_device_rows, process_rows

        lay = self.layout
        wide, old = lay.summary_wide, lay.summary_old
        lines = [self.clock() + "       "]
        lines += R.summary_header(self.node.driver_version, cuda_version(), wide, old, lay.banner_plus)
        for g in gpus:
            lines += R.summary_gpu(gpu_summary(g), wide, old)
        if any(self._mig_enabled(g) for g in gpus):
            lines.append("")
            rows = [r for g in gpus for r in mig_device_rows(g)]
            lines += R.mig_devices_table(rows, wide, old, lay.mig_header_new)
        lines.append("")
        lines += R.processes_table([r for g in gpus for r in process_rows(g)], wide, old, lay.proc_pid_wide)
        for line in lines:
            self.say(line)
        return 0


# Printed after "Enabled/Disabled MIG Mode for GPU ..." when persistence mode is off (real captures: 515.86.01,
# 570.169, 610.43.02 and a GH200 on an unrecorded driver).
PERSISTENCE_WARNING = (
    "Warning: persistence mode is disabled on device {bus}. See the Known Issues section of the nvidia-smi(1) "
    "man page for more information. Run with [--help | -h] switch to get more information on how to enable "
    "persistence mode."
)


def _persistence(g: Any) -> int | None:
    """nvmlDeviceGetPersistenceMode (None where NVML declines)."""
    try:
        return int(N.nvmlDeviceGetPersistenceMode(g.handle))
    except N.NVMLError:
        return None


def _find_ci_profile(profiles: list[Any], token: str) -> Any:
    text = token.strip()
    if is_digits(text):
        return next((p for p in profiles if p.id == int(text)), None)
    if text.upper().startswith("MIG "):
        text = text[4:].strip()
    return next((p for p in profiles if p.name == text), None)


# ------------------------------------------------------------------------------------------ --query-gpu


def _mig_mode_field(which: int) -> Callable[[Any, Any, bool], str]:
    def get(node: Any, g: Any, units: bool) -> str:
        try:
            return "Enabled" if g.mig_mode()[which] == 1 else "Disabled"
        except N.NVMLError:
            return "[N/A]"

    return get


def _mem_field(attr: str) -> Callable[[Any, Any, bool], str]:
    from migctl.device.api import memory_mib

    pos = ("total", "reserved", "used", "free").index(attr)

    def get(node: Any, g: Any, units: bool) -> str:
        try:
            value = memory_mib(g.handle)[pos]
        except N.NVMLError:
            return "[N/A]"
        return f"{value} MiB" if units else str(value)

    return get


_QUERY_FIELDS: dict[str, tuple[str, Callable[[Any, Any, bool], str]]] = {
    "index": ("index", lambda n, g, u: str(g.index)),
    "name": ("name", lambda n, g, u: g.name),
    "gpu_name": ("name", lambda n, g, u: g.name),
    "uuid": ("uuid", lambda n, g, u: g.uuid),
    "gpu_uuid": ("uuid", lambda n, g, u: g.uuid),
    "pci.bus_id": ("pci.bus_id", lambda n, g, u: g.bus_id),
    "gpu_bus_id": ("pci.bus_id", lambda n, g, u: g.bus_id),
    "driver_version": ("driver_version", lambda n, g, u: n.driver_version),
    "count": ("count", lambda n, g, u: str(len(n.gpus()))),
    "mig.mode.current": ("mig.mode.current", _mig_mode_field(0)),
    "mig.mode.pending": ("mig.mode.pending", _mig_mode_field(1)),
    "memory.total": ("memory.total [MiB]", _mem_field("total")),
    "memory.used": ("memory.used [MiB]", _mem_field("used")),
    "memory.free": ("memory.free [MiB]", _mem_field("free")),
    "memory.reserved": ("memory.reserved [MiB]", _mem_field("reserved")),
}


# --query-compute-apps fields -> header. "used_memory" is headed "used_gpu_memory [MiB]" (a real 580.159.04
# run); the other headers repeat the field name (UNCONFIRMED).
_APP_FIELDS = {"pid": "pid", "process_name": "process_name", "used_memory": "used_gpu_memory",
               "used_gpu_memory": "used_gpu_memory", "gpu_uuid": "gpu_uuid", "gpu_name": "gpu_name",
               "gpu_bus_id": "gpu_bus_id"}
_APP_MIB = {"used_memory", "used_gpu_memory"}


USAGE = """\
migctl smi: nvidia-smi compatibility mode (a subset of nvidia-smi's options).

    migctl smi                                  the default summary table (with MIG devices)
    migctl smi -L                               list GPUs and MIG devices
    migctl smi [-i ID] -mig 0|1                 disable/enable MIG mode
    migctl smi [-i ID] --gpu-reset              reset GPUs (applies a pending MIG mode)
    migctl smi [-i ID] --query-gpu=F,... --format=csv[,noheader][,nounits]
    migctl smi [-i ID] --query-compute-apps=F,... --format=csv[,noheader][,nounits]
    migctl smi mig [-i ID] -lgip | -lgipp       GPU instance profiles / placements
    migctl smi mig [-i ID] -lgi [-gi IDS]       GPU instances
    migctl smi mig [-i ID] -lcip | -lcipp [-gi IDS]   compute instance profiles / placements
    migctl smi mig [-i ID] -lci [-gi IDS] [-ci IDS]   compute instances
    migctl smi mig [-i ID] -cgi PROFILES [-C]   create GPU instances (IDs, 3g.40gb or "MIG 3g.40gb")
    migctl smi mig [-i ID] -cci [PROFILES] [-gi IDS]  create compute instances (default profile if none)
    migctl smi mig [-i ID] -dci [-gi IDS] [-ci IDS]   destroy compute instances
    migctl smi mig [-i ID] -dgi [-gi IDS]       destroy GPU instances

Output and messages follow nvidia-smi to the character; see docs/smi.md."""


def run_smi(node: Any, argv: list[str], out: TextIO, clock: Callable[[], str] | None = None) -> int:
    """Run ``nvidia-smi <argv>`` against ``node``, writing to ``out``; returns nvidia-smi's exit code."""
    return Smi(node, out, clock).run(argv)


__all__ = ["INVALID_COMBINATION", "Smi", "exit_code", "run_smi"]
