"""Hypothesis stateful tests: random create/destroy sequences keep the simulator's invariants.

Invariants, checked after every step from what NVML reports: GIs never overlap; compute slices never
exceed the GPU's; GI IDs unique, CI IDs unique per GI, MIG UUIDs unique; the "Free" count of a profile
is exactly how many more of it creation then allows; a create succeeds exactly when an independent
first-principles check says a free placement exists.
"""

from __future__ import annotations

import pynvml as N
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import migctl.sim as sim
from migctl.catalog import Placement, load_model, model_keys
from migctl.device import open_node

MODELS = model_keys()


def independent_can_create(model, gis, profile, placement=None) -> bool:
    """From first principles (not migctl.catalog.geometry): is there a free placement for ``profile``?"""
    occupied = set()
    for gi in gis:
        occupied |= set(range(gi.placement.start, gi.placement.start + gi.placement.size))
    compute = sum(model.profile(gi.profile_id).slices for gi in gis)
    same = sum(1 for gi in gis if gi.profile_id == profile.id)
    if compute + profile.slices > model.compute_slices or same >= profile.max_instances:
        return False
    kinds = [model.profile(gi.profile_id).index_name for gi in gis]
    if profile.index_name.endswith("ALL_ME") and any(not k.endswith("NO_ME") for k in kinds):
        return False  # nvml.h: ALL_ME "prevents allocation of all but _NO_ME profiles"
    if any(k.endswith("ALL_ME") for k in kinds) and not profile.index_name.endswith("NO_ME"):
        return False
    starts = profile.placement_starts if placement is None else [placement.start]
    if placement is not None and placement.start not in profile.placement_starts:
        return False
    return any(not (set(range(s, s + profile.placement_size)) & occupied) for s in starts)


class MigMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model_key: str | None = None

    @precondition(lambda self: self.model_key is None)
    @rule(model=st.sampled_from(MODELS))
    def start(self, model: str) -> None:
        self.model_key = model
        self.model = load_model(model)
        sim.install(f"1x{model}", state_path=None)
        self.gpu = open_node(f"1x{model}").gpu(0)
        self.gpu.set_mig_mode(True)

    @precondition(lambda self: self.model_key is not None)
    @rule(data=st.data(), with_placement=st.booleans())
    def create_gi(self, data, with_placement: bool) -> None:
        profile = data.draw(st.sampled_from(self.model.gi_profiles))
        placement = None
        if with_placement:
            start = data.draw(st.integers(0, self.model.memory_slices - 1))
            placement = Placement(start, profile.placement_size)
        gis = self.gpu.gpu_instances()
        expected = independent_can_create(self.model, gis, profile, placement)
        try:
            gi = self.gpu.create_gi(profile.id, placement)
        except N.NVMLError_InsufficientResources:
            assert not expected
            return
        except N.NVMLError_InvalidArgument:
            assert placement is not None and placement.start not in profile.placement_starts
            return
        assert expected
        if placement is not None:
            assert gi.placement == placement

    @precondition(lambda self: self.model_key is not None)
    @rule(data=st.data())
    def destroy_gi(self, data) -> None:
        gis = self.gpu.gpu_instances()
        if not gis:
            return
        gi = data.draw(st.sampled_from(gis))
        if gi.compute_instances():
            with pytest.raises(N.NVMLError_InUse):
                gi.destroy()
            for ci in gi.compute_instances():
                ci.destroy()
        gi.destroy()

    @precondition(lambda self: self.model_key is not None)
    @rule(data=st.data())
    def create_ci(self, data) -> None:
        gis = self.gpu.gpu_instances()
        if not gis:
            return
        gi = data.draw(st.sampled_from(gis))
        profile = data.draw(st.sampled_from(gi.ci_profiles()))
        free = gi.ci_remaining(profile.id)
        try:
            gi.create_ci(profile.id)
        except N.NVMLError_InsufficientResources:
            assert free == 0
            return
        assert free > 0

    @precondition(lambda self: self.model_key is not None)
    @rule(data=st.data())
    def destroy_ci(self, data) -> None:
        cis = [ci for gi in self.gpu.gpu_instances() for ci in gi.compute_instances()]
        if cis:
            data.draw(st.sampled_from(cis)).destroy()

    @precondition(lambda self: self.model_key is not None)
    @rule(data=st.data())
    def free_count_matches_creation(self, data) -> None:
        profile = data.draw(st.sampled_from(self.gpu.profiles()))
        free = self.gpu.remaining(profile.id)
        made = [self.gpu.create_gi(profile.id) for _ in range(free)]
        with pytest.raises(N.NVMLError_InsufficientResources):
            self.gpu.create_gi(profile.id)
        for gi in made:
            gi.destroy()

    @invariant()
    def layout_is_valid(self) -> None:
        if self.model_key is None:
            return
        gis = self.gpu.gpu_instances()
        slots: list[int] = []
        for gi in gis:
            slots.extend(range(gi.placement.start, gi.placement.start + gi.placement.size))
            assert gi.placement in self.model.profile(gi.profile_id).placements
        assert len(slots) == len(set(slots)), "GIs overlap"
        assert sum(self.model.profile(gi.profile_id).slices for gi in gis) <= self.model.compute_slices
        assert len({gi.id for gi in gis}) == len(gis)
        for gi in gis:
            cis = gi.compute_instances()
            assert len({c.id for c in cis}) == len(cis)
            assert sum(c.placement.size for c in cis) <= self.model.profile(gi.profile_id).slices
        uuids = [d.uuid for d in self.gpu.mig_devices()]
        assert len(uuids) == len(set(uuids))
        assert len(uuids) == sum(len(gi.compute_instances()) for gi in gis)

    def teardown(self) -> None:
        sim.uninstall()


MigMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestMigMachine = MigMachine.TestCase
