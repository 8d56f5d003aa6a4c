"""``python -m migctl.parted`` is ``nvidia-mig-parted``."""

from migctl.parted.cli import run

run()
