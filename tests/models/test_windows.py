import pytest
import torch

from fusion.models.windows import (
    PARTITIONS,
    gather_nodes,
    node_index,
    pack_windows,
    relative_position_index,
    scatter_nodes,
)


@pytest.mark.parametrize("relation", ["local", "grid"])
def test_packed_windows_hold_each_groups_nodes_in_window_order(relation):
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(2, 8, 12, generator=g) > 0.7
    valid[0, :4, :4] = False  # an empty local window
    cell, node_id = node_index(valid)
    assert torch.equal(cell, valid.flatten().nonzero().squeeze(1))
    packed = pack_windows(node_id, 4, relation)
    table = PARTITIONS[relation](node_id, 4)  # (G, 16) node id or -1
    assert packed.node.shape == (len(table), int((table >= 0).sum(1).max()))
    for gi in range(len(table)):  # the reference: each group's nodes, read off the partition one by one
        tokens = [t for t in range(16) if table[gi, t] >= 0]
        k = len(tokens)
        assert packed.node[gi, :k].tolist() == [int(table[gi, t]) for t in tokens]
        assert packed.token[gi, :k].tolist() == tokens
        assert (packed.node[gi, k:] == -1).all()
    assert packed.occupied().tolist() == [gi for gi in range(len(table)) if (table[gi] >= 0).any()]


def test_gather_then_scatter_returns_every_node_once():
    valid = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    _, node_id = node_index(valid)
    packed = pack_windows(node_id, 4, "grid")
    x = torch.randn(int(valid.sum()), 5)
    slots = packed.node[packed.occupied()]
    torch.testing.assert_close(scatter_nodes(gather_nodes(x, slots), slots, len(x)), x)


def test_no_node_packs_to_empty_groups():
    _, node_id = node_index(torch.zeros(1, 8, 8, dtype=torch.bool))
    packed = pack_windows(node_id, 4, "local")
    assert packed.node.shape == (4, 0) and len(packed.occupied()) == 0


def test_relative_position_index_is_symmetric_about_the_centre():
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and int(idx.max()) == 24 and (idx.diagonal() == 12).all()
    assert torch.equal(idx + idx.T, torch.full((9, 9), 24))
