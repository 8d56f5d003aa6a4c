"""nvidia-smi compatibility mode (``migctl smi ...``): nvidia-smi's syntax, tables and messages over migctl's
device layer. :func:`run_smi` is the entry point; :mod:`.args` parses, :mod:`.render` formats,
:mod:`.commands` runs, :mod:`.telemetry` reads the default table's NVML values."""

from migctl.smi.commands import exit_code, run_smi

__all__ = ["exit_code", "run_smi"]
