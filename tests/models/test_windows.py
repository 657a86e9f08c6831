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


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_shifted_windows_group_the_cells_of_the_moved_grid(shift):
    """The reference, cell by cell: cell (b, y, x) sits in window (b, (y + shift) // 4, (x + shift) // 4) at token
    ((y + shift) % 4) * 4 + (x + shift) % 4."""
    g = torch.Generator().manual_seed(1)
    valid = torch.rand(2, 8, 12, generator=g) > 0.5
    cell, node_id = node_index(valid)
    packed = pack_windows(node_id, 4, "local", shift)
    assert packed.node.shape[0] == 2 * (8 // 4 + 1) * (12 // 4 + 1)  # one more row and column of windows
    where = {}  # node -> (group, token)
    for gi, ti in (packed.node >= 0).nonzero().tolist():
        where[int(packed.node[gi, ti])] = (gi, int(packed.token[gi, ti]))
    assert sorted(where) == list(range(len(cell)))  # every node exactly once
    b, rest = cell // (8 * 12), cell % (8 * 12)
    y, x = (rest // 12 + shift).tolist(), (rest % 12 + shift).tolist()
    window = [(bi, yi // 4, xi // 4) for bi, yi, xi in zip(b.tolist(), y, x, strict=True)]
    for n in range(len(cell)):
        assert where[n][1] == (y[n] % 4) * 4 + x[n] % 4
        for m in range(len(cell)):  # same group exactly when the same window of the moved grid
            assert (where[n][0] == where[m][0]) == (window[n] == window[m])


def test_only_local_windows_shift_and_by_less_than_a_window():
    _, node_id = node_index(torch.ones(1, 8, 8, dtype=torch.bool))
    for relation, shift in (("grid", 2), ("local", 4), ("local", -1)):
        with pytest.raises(ValueError, match="shift"):
            pack_windows(node_id, 4, relation, shift)


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
