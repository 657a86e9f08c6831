"""The vocabulary of token kinds (trunk) and node / edge types (heterogeneous fusion), in one place.

Edge types follow torch-geometric's `(source, relation, target)` triples, the relation saying which attention (local
window or dilated grid) the edge belongs to; `pair_key` names the edge-type-specific weights of a (source, target)
pair in `nn.ParameterDict`s, which only take string keys.
"""

from __future__ import annotations

CAMERA = "camera"
LIDAR = "lidar"
TEXT = "text"
OBJECT = "object"  # scene-QA object tokens

TOKEN_KINDS = (CAMERA, LIDAR, TEXT, OBJECT)  # every kind of token the shared trunk may see
NODE_TYPES = (CAMERA, LIDAR)  # BEV node types of the fusion graph (cooperative agents would be added here)
TYPE_PAIRS = tuple((src, dst) for src in NODE_TYPES for dst in NODE_TYPES)  # camera->camera, camera->lidar, ...
RELATIONS = ("local", "grid")  # edges inside a local window / inside a dilated global grid group
EDGE_TYPES = tuple((src, rel, dst) for rel in RELATIONS for src, dst in TYPE_PAIRS)


def pair_key(src: str, dst: str) -> str:
    """("camera", "lidar") -> "camera__lidar", the name of the edge-type-specific weights of that pair."""
    return f"{src}__{dst}"
