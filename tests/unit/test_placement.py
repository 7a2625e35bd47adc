"""Placement without Ray: groups, nodes, strategies, names, redaction.

Everything in ``aioray_runner._caller.placement`` is a pure function of options and of
what ``ray.nodes()`` returns, so these tests build node dicts by hand and never
start Ray (no ``ray_session`` or ``runtime`` fixture here).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest

from aioray_runner._caller import placement
from aioray_runner._caller.placement import (
    DEFAULT_GROUP,
    NodeAffinity,
    actor_name,
    actor_options,
    default_supervisor_count,
    group_key,
    live_cpu_nodes,
    live_node_count,
    needs_nodes,
    redact_options,
    scheduling_strategy,
    to_ray_strategy,
)
from aioray_runner.context import ACTOR_PLACEMENT_OPTIONS


def node(node_id: str, *, alive: bool = True, cpu: float = 2, key: str = "Alive") -> dict[str, Any]:
    """A node as ``ray.nodes()`` describes it (only the keys placement reads)."""
    resources = {"CPU": cpu} if cpu else {"memory": 1e9}
    return {"NodeID": node_id, key: alive, "Resources": resources}


THREE = ["n-a", "n-b", "n-c"]


def place(
    index: int = 0,
    generation: int = 0,
    nodes: list[str] = THREE,
    base: dict[str, Any] | None = None,
    group_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The actor options of supervisor ``index`` in the group its options make."""
    group_options = group_options or {}
    group = group_key(group_options)
    return actor_options(
        base or {},
        group_options,
        index=index,
        generation=generation,
        nodes=nodes,
        pool_name="pool1234",
        group=group,
        group_number=0 if group == DEFAULT_GROUP else 1,
    )


# -- nodes -----------------------------------------------------------------------------


def test_live_cpu_nodes_drops_dead_and_cpuless_nodes_and_sorts() -> None:
    nodes = [
        node("n-c"),
        node("n-dead", alive=False),
        node("n-head", cpu=0),  # a head started with --num-cpus=0
        node("n-a", key="alive"),  # the lower-case spelling some Ray versions use
        node("n-dead2", alive=False, key="alive"),
        node("n-b"),
    ]
    assert live_cpu_nodes(nodes) == ["n-a", "n-b", "n-c"]


def test_live_cpu_nodes_without_resources_key() -> None:
    assert live_cpu_nodes([{"NodeID": "n-x", "Alive": True}]) == []


def test_live_node_count_counts_live_nodes_at_least_one() -> None:
    assert live_node_count([]) == 1  # Ray still starting: one supervisor anyway
    assert live_node_count([node("a", alive=False)]) == 1
    nodes = [node("a"), node("b", key="alive"), node("c", alive=False), node("d", cpu=0)]
    # Counts CPU-less live nodes too (for logs); the default supervisor count does not.
    assert live_node_count(nodes) == 3


def test_default_supervisor_count_is_one_per_live_node_with_cpus() -> None:
    head_without_cpus = node("head", cpu=0)
    nodes = [head_without_cpus, node("w1"), node("w2"), node("gone", alive=False)]
    assert default_supervisor_count(nodes) == 2  # the CPU-less head runs no supervisor
    assert default_supervisor_count([head_without_cpus]) == 1  # never zero
    assert default_supervisor_count([]) == 1


# -- groups ----------------------------------------------------------------------------


def test_no_options_is_the_default_group() -> None:
    assert group_key({}) == DEFAULT_GROUP


def test_group_key_ignores_keyword_order() -> None:
    first = group_key({"num_gpus": 1, "resources": {"x": 1}})
    second = group_key({"resources": {"x": 1}, "num_gpus": 1})
    assert first == second
    assert first != DEFAULT_GROUP


def test_group_key_is_stable_for_equal_values() -> None:
    # Equal but distinct objects, unhashable ones included, make one group.
    assert group_key({"runtime_env": {"env_vars": {"A": "1"}}}) == group_key(
        {"runtime_env": {"env_vars": {"A": "1"}}}
    )
    assert hash(group_key({"resources": {"x": 1}})) == hash(group_key({"resources": {"x": 1}}))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"num_gpus": 1}, {"num_gpus": 2}),
        ({"num_gpus": 1}, {"num_cpus": 1}),
        ({"resources": {"x": 1}}, {"resources": {"x": 1, "y": 1}}),
        ({"num_gpus": 1}, {"num_gpus": "1"}),  # repr keeps the type apart
    ],
)
def test_group_key_differs_for_different_options(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert group_key(one) != group_key(other)


# -- scheduling strategy ---------------------------------------------------------------


def test_one_node_spreads() -> None:
    assert place(nodes=["n-a"])["scheduling_strategy"] == "SPREAD"
    assert place(nodes=[])["scheduling_strategy"] == "SPREAD"


def test_three_nodes_pin_index_modulo_three_hard() -> None:
    chosen = [place(index=i)["scheduling_strategy"] for i in range(5)]
    assert chosen == [
        NodeAffinity("n-a", soft=False),
        NodeAffinity("n-b", soft=False),
        NodeAffinity("n-c", soft=False),
        NodeAffinity("n-a", soft=False),
        NodeAffinity("n-b", soft=False),
    ]


def test_replacement_prefers_its_node_softly() -> None:
    assert place(index=4, generation=1)["scheduling_strategy"] == NodeAffinity("n-b", soft=True)
    assert place(index=0, generation=3)["scheduling_strategy"] == NodeAffinity("n-a", soft=True)


@pytest.mark.parametrize("option", sorted(placement.RESOURCE_OPTIONS))
def test_resource_options_spread(option: str) -> None:
    # From the runtime's own options (the default group) and from a group's.
    assert place(base={option: 1})["scheduling_strategy"] == "SPREAD"
    assert place(group_options={option: 1})["scheduling_strategy"] == "SPREAD"
    assert not needs_nodes({option: 1}, {}, DEFAULT_GROUP)


def test_non_default_group_spreads() -> None:
    # runtime_env places nothing: the group alone is why it is not pinned.
    group_options = {"runtime_env": {"env_vars": {"A": "1"}}}
    assert place(group_options=group_options)["scheduling_strategy"] == "SPREAD"
    assert not needs_nodes({}, group_options, group_key(group_options))


@pytest.mark.parametrize("where", ["base", "group"])
def test_user_strategy_is_kept(where: str) -> None:
    mine = object()  # any strategy Ray takes: passed on as it is
    options = {"scheduling_strategy": mine}
    placed = place(base=options) if where == "base" else place(group_options=options)
    assert placed["scheduling_strategy"] is mine
    assert not needs_nodes(options, {}, DEFAULT_GROUP)


def test_group_options_win_over_the_runtimes() -> None:
    placed = place(base={"num_cpus": 1, "num_gpus": 1}, group_options={"num_cpus": 2})
    assert placed["num_cpus"] == 2 and placed["num_gpus"] == 1


def test_only_pinned_placement_needs_nodes() -> None:
    assert needs_nodes({}, {}, DEFAULT_GROUP)
    assert needs_nodes({"num_cpus": 1, "runtime_env": {}}, {}, DEFAULT_GROUP)


def test_scheduling_strategy_matches_actor_options() -> None:
    assert scheduling_strategy({}, {}, DEFAULT_GROUP, 2, 0, THREE) == NodeAffinity("n-c", False)


# -- the rest of the actor options -----------------------------------------------------


def test_defaults_reserve_no_cpu_and_allow_many_methods() -> None:
    placed = place()
    assert placed["num_cpus"] == 0
    assert placed["max_concurrency"] == 100_000
    assert set(placed) == {"num_cpus", "max_concurrency", "scheduling_strategy", "name"}


def test_user_num_cpus_and_name_win() -> None:
    placed = place(base={"num_cpus": 1, "name": "mine"})
    assert placed["num_cpus"] == 1 and placed["name"] == "mine"


def test_inputs_are_not_changed() -> None:
    base = {"num_cpus": 1}
    group_options = {"num_gpus": 1}
    place(base=base, group_options=group_options)
    assert base == {"num_cpus": 1} and group_options == {"num_gpus": 1}


# -- names -----------------------------------------------------------------------------


def test_actor_names_are_unique() -> None:
    names = [
        actor_name(pool, group, index, generation)
        for pool in ("pool1234", "pool5678")
        for group in range(3)
        for index in range(12)
        for generation in range(12)
    ]
    assert len(set(names)) == len(names)
    assert all(name.startswith("aioray-supervisor-") for name in names)


def test_default_group_name_has_no_group_tag() -> None:
    assert actor_name("pool1234", 0, 1, 2) == "aioray-supervisor-pool1234-1-2"
    assert actor_name("pool1234", 3, 1, 2) == "aioray-supervisor-pool1234-g3-1-2"


def test_names_hold_no_option_values() -> None:
    secret = "s3cr3t-token-value"
    group_options = {"runtime_env": {"env_vars": {"API_TOKEN": secret}}, "resources": {"x": 7}}
    name = place(group_options=group_options)["name"]
    assert secret not in name and "API_TOKEN" not in name and "x" not in name.split("-")


# -- the edge to Ray -------------------------------------------------------------------


def test_to_ray_strategy() -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = "ab" * 28  # Ray checks the form of a node ID (28 bytes, hex)
    converted = to_ray_strategy(NodeAffinity(node_id, soft=True))
    assert isinstance(converted, NodeAffinitySchedulingStrategy)
    assert (converted.node_id, converted.soft) == (node_id, True)
    assert to_ray_strategy(NodeAffinity(node_id, soft=False)).soft is False
    assert to_ray_strategy("SPREAD") == "SPREAD"
    mine = object()
    assert to_ray_strategy(mine) is mine


def test_placement_works_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh copy of the module, loaded while `import ray` fails: only the edge
    # function may need Ray.
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)
    spec = importlib.util.spec_from_file_location("placement_alone", placement.__file__)
    assert spec is not None and spec.loader is not None
    alone = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "placement_alone", alone)  # dataclasses look it up
    spec.loader.exec_module(alone)
    placed = alone.actor_options(
        {},
        {},
        index=1,
        generation=0,
        nodes=alone.live_cpu_nodes([node("a"), node("b")]),
        pool_name="p",
        group=alone.DEFAULT_GROUP,
        group_number=0,
    )
    assert placed["scheduling_strategy"] == alone.NodeAffinity("b", soft=False)
    with pytest.raises(ImportError):
        alone.to_ray_strategy(placed["scheduling_strategy"])


# -- redaction and public names --------------------------------------------------------


def test_redact_options_hides_env_var_values_only() -> None:
    options = {
        "num_gpus": 1,
        "runtime_env": {"env_vars": {"API_TOKEN": "secret", "MODE": "x"}, "pip": ["rich"]},
    }
    shown = redact_options(options)
    assert shown == {
        "num_gpus": 1,
        "runtime_env": {
            "env_vars": {"API_TOKEN": "<redacted>", "MODE": "<redacted>"},
            "pip": ["rich"],
        },
    }
    # The options Ray receives keep their values.
    assert options["runtime_env"]["env_vars"]["API_TOKEN"] == "secret"


@pytest.mark.parametrize(
    "options", [{}, {"num_gpus": 1}, {"runtime_env": {"pip": ["rich"]}}, {"runtime_env": "x"}]
)
def test_redact_options_leaves_options_without_env_vars(options: dict[str, Any]) -> None:
    assert redact_options(options) == options


def test_context_reexports_placement_options() -> None:
    assert ACTOR_PLACEMENT_OPTIONS is placement.ACTOR_PLACEMENT_OPTIONS
    assert placement.RESOURCE_OPTIONS <= ACTOR_PLACEMENT_OPTIONS
