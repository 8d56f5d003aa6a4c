"""A stand-in for ``nvidia-smi -r -i BUS[,BUS...]`` over a simulated node's state file, for the tests of migctl's
real-driver reset path (``Node.reset_gpus`` with no simulator attached runs the ``nvidia-smi`` in PATH).

What it prints and its exit status are the real tool's, as captured in public reports: success
``GPU 00000000:1A:00.0 was successfully reset.`` with exit 0; refusal ``The following GPUs could not be reset:`` /
``  GPU 00000000:1A:00.0: In use by another client`` / the paragraph about other processes, exit 255
(NVIDIA/NVSentinel issue #1690, NVIDIA/gpu-operator issue #118, ComputeCanada/puppet-magic_castle issue #387).
Whether the real tool resets the other GPUs of a list when one is refused is not recorded; the simulator does.
Environment: FAKE_SMI_SPEC (the node's spec), FAKE_SMI_STATE (its state file).
"""

from __future__ import annotations

import os
import sys


def main(args: list[str]) -> int:
    if len(args) != 3 or args[0] not in ("-r", "--gpu-reset") or args[1] != "-i":
        print(f"fake nvidia-smi: only -r -i BUS[,BUS...] is served, not {' '.join(args)}", file=sys.stderr)
        return 2
    import migctl.sim as sim

    node = sim.install(os.environ["FAKE_SMI_SPEC"], state_path=os.environ["FAKE_SMI_STATE"])
    result = node.reset_gpus(args[2].split(","))
    refused = [bus for bus, (rc, _) in result.items() if rc != 0]
    if refused:
        print("The following GPUs could not be reset:")
        for bus in refused:
            print(f"  GPU {bus}: In use by another client")
        print()
        print(f"{len(refused)} device is currently being used by one or more other processes (e.g., Fabric Manager, "
              "CUDA application, graphics application such as an X server, or a monitoring application such as "
              "another instance of nvidia-smi). Please first kill all processes using this device and all compute "
              "applications running in the system.")
        return 255
    for bus in result:
        print(f"GPU {bus} was successfully reset.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
