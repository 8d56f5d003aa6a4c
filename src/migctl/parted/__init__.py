"""A drop-in ``nvidia-mig-parted``: that tool's command line, flags, environment variables, hook variables
and exit statuses, running migctl's transactional engine (docs/kubernetes.md).

The GPU Operator's MIG manager shells out to ``nvidia-mig-parted``; installing migctl puts this console
script on the PATH under that name.
"""

from migctl.parted.cli import main, run

__all__ = ["main", "run"]
