"""Where supervisors go: groups, actor options, scheduling strategy, names.

Everything here is a pure function of the actor options and of the nodes
``ray.nodes()`` returned, so it can be tested without Ray: the caller reads
the nodes and passes them in. The strategy is plain data (:class:`NodeAffinity`
or ``"SPREAD"``); :func:`to_ray_strategy` turns it into Ray's object at the edge,
and is the only function here that imports Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACTOR_PLACEMENT_OPTIONS",
    "DEFAULT_GROUP",
    "RESOURCE_OPTIONS",
    "GroupKey",
    "NodeAffinity",
    "actor_name",
    "actor_options",
    "default_supervisor_count",
    "group_key",
    "live_cpu_nodes",
    "live_node_count",
    "needs_nodes",
    "redact_options",
    "scheduling_strategy",
    "to_ray_strategy",
]

#: A group of supervisors, named by its extra actor options: sorted
#: ``(name, repr(value))`` pairs, hashable and independent of keyword order.
GroupKey = tuple[tuple[str, str], ...]
#: The group started with the runtime: no extra options.
DEFAULT_GROUP: GroupKey = ()

#: Options that decide where a supervisor actor runs and what it holds
#: (public as ``aioray_runner.context.ACTOR_PLACEMENT_OPTIONS``).
ACTOR_PLACEMENT_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "memory",
        "resources",
        "accelerator_type",
        "runtime_env",
        "scheduling_strategy",
        "label_selector",
    }
)

#: Options that ask for something not every node has: a supervisor with any of
#: them goes where Ray finds it, never pinned to a node.
RESOURCE_OPTIONS = frozenset({"num_gpus", "resources", "memory", "accelerator_type"})

# Ray's limit on actor methods running at once: submit, poll, cancel,
# release, and result_of, one per dependent waiting on another
# supervisor. The next poll must always get in (calls start only
# when it arrives), so this is far above any plausible fan-in.
_MAX_CONCURRENCY = 100_000


@dataclass(frozen=True)
class NodeAffinity:
    """Run on node ``node_id``; a ``soft`` affinity only prefers it."""

    node_id: str
    soft: bool


def _alive(node: Mapping[str, Any]) -> bool:
    """Whether ``ray.nodes()`` reports this node alive (Ray has spelt the key both ways)."""
    return bool(node.get("Alive") or node.get("alive"))


def live_cpu_nodes(nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The IDs of the live nodes that have CPUs, sorted, from ``ray.nodes()``.

    Sorted so that supervisor ``i`` maps to the same node however Ray orders
    its answer. A node without CPUs (a head started with ``--num-cpus=0``) is
    left out, as placement always has: nobody pins work to such a node.
    """
    return sorted(
        node["NodeID"] for node in nodes if _alive(node) and node.get("Resources", {}).get("CPU")
    )


def live_node_count(nodes: Sequence[Mapping[str, Any]]) -> int:
    """Live nodes, with or without CPUs, at least one (for logs)."""
    return max(1, sum(1 for node in nodes if _alive(node)))


def default_supervisor_count(nodes: Sequence[Mapping[str, Any]]) -> int:
    """The default number of supervisors: one per live node with CPUs, at least one.

    The nodes :func:`live_cpu_nodes` pins supervisors to: a head started with
    ``--num-cpus=0`` gets none (sync tasks run in a supervisor's threads, and
    such a head is meant to run nothing). A zero-node answer (Ray still
    starting) still gets one supervisor.
    """
    return max(1, len(live_cpu_nodes(nodes)))


def group_key(options: Mapping[str, Any]) -> GroupKey:
    """The group of supervisors started with these extra actor options.

    ``repr`` makes unhashable values (dicts of resources, runtime envs) usable
    as a key; sorting makes it independent of keyword order. No options is the
    default group.
    """
    if not options:
        return DEFAULT_GROUP
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def _merged(base: Mapping[str, Any], group_options: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime's actor options overlaid with the group's (the group's win)."""
    return {**base, **group_options}


def needs_nodes(base: Mapping[str, Any], group_options: Mapping[str, Any], group: GroupKey) -> bool:
    """Whether placing a supervisor of ``group`` depends on the nodes.

    Only supervisors pinned to a node do; the caller asks Ray for the nodes
    only then, so groups with their own placement cost no extra GCS call.
    """
    options = _merged(base, group_options)
    if "scheduling_strategy" in options:
        return False  # the user's choice is kept as it is
    # Pinned to a node only when any node can hold it: a supervisor that asks
    # for GPUs or custom resources goes where Ray finds them.
    return group == DEFAULT_GROUP and not RESOURCE_OPTIONS & options.keys()


def scheduling_strategy(
    base: Mapping[str, Any],
    group_options: Mapping[str, Any],
    group: GroupKey,
    index: int,
    generation: int,
    nodes: Sequence[str],
) -> Any:
    """Where supervisor ``index`` (its ``generation``-th incarnation) of ``group`` goes.

    ``nodes`` is :func:`live_cpu_nodes` (read only if :func:`needs_nodes`).
    Returns the user's ``scheduling_strategy`` if one was given, else
    ``"SPREAD"`` or a :class:`NodeAffinity` to node ``index % len(nodes)``.

    Ray's "SPREAD" is best effort, and so is a soft node affinity: in tests
    two supervisors that reserve no CPU often landed on one node with either.
    So the first placement is a hard node affinity to a node that is alive
    now; a replacement only prefers its node (which may be gone).
    """
    options = _merged(base, group_options)
    if "scheduling_strategy" in options:
        return options["scheduling_strategy"]
    if not needs_nodes(base, group_options, group) or len(nodes) < 2:
        return "SPREAD"
    return NodeAffinity(nodes[index % len(nodes)], soft=generation > 0)


def actor_name(pool_name: str, group_number: int, index: int, generation: int) -> str:
    """The Ray actor name of a supervisor: unique per pool, group, index and generation.

    The group appears by its number in the pool (0, the default group, not at
    all), never by its options: options may hold secrets (``runtime_env``
    variables), and names are shown in Ray's dashboard and state API.
    """
    group_tag = f"-g{group_number}" if group_number else ""
    return f"aioray-supervisor-{pool_name}{group_tag}-{index}-{generation}"


def actor_options(
    base: Mapping[str, Any],
    group_options: Mapping[str, Any],
    *,
    index: int,
    generation: int,
    nodes: Sequence[str],
    pool_name: str,
    group: GroupKey,
    group_number: int,
) -> dict[str, Any]:
    """The full Ray actor options of one supervisor (strategy as plain data).

    ``base`` is the runtime's actor options, ``group_options`` the group's;
    either may override ``num_cpus`` (0 by default: a supervisor mostly
    awaits), ``scheduling_strategy`` and ``name``. Pass the strategy through
    :func:`to_ray_strategy` before handing these to Ray.
    """
    options: dict[str, Any] = {
        "num_cpus": 0,
        "max_concurrency": _MAX_CONCURRENCY,
        **_merged(base, group_options),
    }
    options["scheduling_strategy"] = scheduling_strategy(
        base, group_options, group, index, generation, nodes
    )
    options.setdefault("name", actor_name(pool_name, group_number, index, generation))
    return options


def to_ray_strategy(strategy: Any) -> Any:
    """Ray's form of a strategy from :func:`scheduling_strategy` (others pass through)."""
    if not isinstance(strategy, NodeAffinity):
        return strategy
    # Imported here: the rest of this module must not need Ray.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(strategy.node_id, soft=strategy.soft)


def redact_options(options: dict[str, Any]) -> dict[str, Any]:
    """Ray actor options as they may be shown: ``runtime_env`` env var values hidden.

    Environment variables are where credentials are passed to workers
    (``runtime_env={"env_vars": {"API_TOKEN": ...}}``); their names are kept.
    """
    runtime_env = options.get("runtime_env")
    if not isinstance(runtime_env, dict) or not isinstance(runtime_env.get("env_vars"), dict):
        return options
    env_vars = {name: "<redacted>" for name in runtime_env["env_vars"]}
    return {**options, "runtime_env": {**runtime_env, "env_vars": env_vars}}
