"""Safe YAML loading that also rejects duplicate keys (a silent overwrite in plain YAML) and
alias bombs.

YAML aliases (``*name``) repeat an anchored node without copying it, so a few hundred bytes of
chained aliases ("billion laughs") stand for billions of nodes; everything that walks the loaded
value (validation, hashing, error messages) pays for the expanded size. :func:`safe_load` counts
the nodes the document would have with every alias expanded, before building any Python object,
and refuses a document over :data:`MAX_EXPANDED_NODES` or one whose aliases form a cycle.
"""

from __future__ import annotations

from typing import Any

import yaml

#: The most nodes (scalars, sequences, mappings) a document may hold once its aliases are
#: expanded; the shipped specs hold a few hundred to a few thousand.
MAX_EXPANDED_NODES = 100_000


class YamlLimitError(yaml.YAMLError):
    """A document that expands to too many nodes, or whose aliases refer to themselves."""


def expanded_size(root: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """Nodes under ``root`` counted as if every alias were a copy, without expanding anything
    (each distinct node is visited once). Raises :class:`YamlLimitError` past ``limit`` or on an
    alias cycle."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > limit:
                mark = node.start_mark
                raise YamlLimitError(
                    f"the document expands to more than {limit:,} nodes through its aliases "
                    f"(line {mark.line + 1}); repeated aliases of aliases are refused"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            mark = node.start_mark
            raise YamlLimitError(f"an alias refers to a node that contains it (line {mark.line + 1})")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_document(self, node: yaml.Node) -> Any:
        expanded_size(node)
        return super().construct_document(node)


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` plus duplicate-key detection and the alias-expansion limit (both
    raise a :class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)
