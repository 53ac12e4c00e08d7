"""Imports run down the layers, never up: the tree shows where a danmaku and a video frame go.

Each `server` package (or top-level module) sits in one layer. A module may import its own
package and any package of a lower layer; an import of a higher layer, or of another package
in the same layer, is a violation. Typing-only imports count too (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from tests.test_imports import import_graph

# lowest first; docs/ARCHITECTURE.md opens with the same list
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        ["server", "server.config", "server.deadline", "server.logs", "server.metrics", "server.wire"],
    ),
    ("room core", ["server.room"]),
    ("participant", ["server.assistant"]),
    ("shared state", ["server.broker"]),
    ("delivery", ["server.delivery"]),
    ("analytics", ["server.analytics"]),
    ("webhooks", ["server.webhooks"]),
    ("policy", ["server.abuse"]),
    ("media", ["server.media"]),
    ("node", ["server.node"]),
    ("edge", ["server.edge", "server.admin"]),
    ("process", ["server.app", "server.cli", "server.workers", "server.demo", "server.__main__"]),
]
PEERS_MAY_IMPORT_EACH_OTHER = {"process"}  # the entry points: cli -> app, workers


def unit_of(module: str) -> tuple[int, str]:
    """(layer index, package) of a module: the longest listed prefix wins."""
    best: tuple[int, str] | None = None
    for index, (_, units) in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (
                best is None or len(unit) > len(best[1])
            ):
                best = (index, unit)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md"
    return best


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in sorted(graph.items()):
        layer, unit = unit_of(module)
        for dep in sorted(deps):
            dep_layer, dep_unit = unit_of(dep)
            if dep_unit == "server" or dep_unit == unit:
                continue
            if dep_layer > layer or (
                dep_layer == layer and LAYERS[layer][0] not in PEERS_MAY_IMPORT_EACH_OTHER
            ):
                found.append(f"{module} ({LAYERS[layer][0]}) -> {dep} ({LAYERS[dep_layer][0]})")
    return found


def test_checker_sees_an_upward_import() -> None:
    graph = {"server.wire.protocol": {"server.node.node"}, "server.node.node": {"server.wire.protocol"}}
    assert violations(graph) == ["server.wire.protocol (foundation) -> server.node.node (node)"]
    assert violations({"server.abuse.guard": {"server.analytics.recorder"}}) == []
    assert violations({"server.edge.http": {"server.admin.routes"}}) != []  # same layer, other package


def test_every_import_runs_down_the_layers() -> None:
    found = violations(import_graph())
    assert not found, "\n".join(found)
