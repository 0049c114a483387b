"""The benchmark's command line: `--set` overrides of a preset's parameters."""

from __future__ import annotations

import copy

import pytest

from bench.cli import PRESETS, preset_with


def test_set_replaces_one_parameter_of_a_scenario_and_leaves_the_rest():
    preset = preset_with(copy.deepcopy(PRESETS["quick"]), ["capacity.rates=[30]", "capacity.chunk_cost.rate=2"])

    assert preset["capacity"]["rates"] == [30]
    assert preset["capacity"]["chunk_cost"]["rate"] == 2
    assert preset["capacity"]["step_s"] == PRESETS["quick"]["capacity"]["step_s"]
    assert preset["enqueue"] == PRESETS["quick"]["enqueue"]


@pytest.mark.parametrize("item", ["capacity.rates", "nosuch.rates=[1]", "rates=[1]", "capacity.rates=[1"])
def test_set_refuses_what_it_cannot_apply(item):
    with pytest.raises(SystemExit):
        preset_with(copy.deepcopy(PRESETS["quick"]), [item])
