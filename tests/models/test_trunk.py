import torch

from fusion.models.trunk import Trunk


def test_type_embeddings_tell_kinds_apart_and_unsharing_copies_the_stack():
    torch.manual_seed(0)
    shared = Trunk(dim=16, depth=2, heads=2, kinds=("camera", "lidar", "text"), window=4)
    unshared = Trunk(dim=16, depth=2, heads=2, kinds=("camera", "lidar", "text"), shared=False, window=4)
    n_block = sum(p.numel() for p in shared.stacks.parameters())
    assert sum(p.numel() for p in unshared.stacks.parameters()) == 3 * n_block
    x = torch.randn(3, 5, 16)
    assert not torch.allclose(shared(x, "camera"), shared(x, "lidar"))
    with torch.no_grad():
        shared.type_embed.weight.copy_(shared.type_embed.weight[:1].expand(3, -1))
    torch.testing.assert_close(shared(x, "camera"), shared(x, "text"))  # only the embedding differs


def test_unshared_kinds_use_their_own_weights():
    trunk = Trunk(dim=16, depth=1, heads=2, kinds=("camera", "lidar"), shared=False, window=4)
    trunk(torch.randn(2, 4, 16), "lidar").sum().backward()
    grads = [[p.grad is not None for p in stack.parameters()] for stack in trunk.stacks]
    assert not any(grads[0]) and all(grads[1])


def test_bev_windows_respect_the_valid_cells():
    torch.manual_seed(0)
    trunk = Trunk(dim=16, depth=1, heads=2, window=4)
    bev = torch.randn(2, 16, 8, 8)
    valid = torch.rand(2, 8, 8) > 0.5
    valid[1, :4, :4] = False  # a window with no valid cell
    out = trunk.forward_bev(bev, valid, "camera")
    assert torch.isfinite(out).all() and out.abs().sum(1)[~valid].max() == 0
    # invalid cells are not attended to: changing them changes nothing
    out2 = trunk.forward_bev(bev + torch.randn_like(bev) * (~valid)[:, None], valid, "camera")
    torch.testing.assert_close(out, out2)


def test_packed_bev_windows_match_full_windows_with_a_key_mask():
    """The reference: every local window with all window^2 cells as tokens, invalid ones masked as keys."""
    from fusion.models.windows import window_partition, window_reverse

    torch.manual_seed(1)
    trunk = Trunk(dim=16, depth=2, heads=2, window=4)
    bev = torch.randn(2, 16, 8, 12)
    valid = torch.rand(2, 8, 12) > 0.6
    valid[0, 4:, 4:8] = False
    out = trunk.forward_bev(bev, valid, "lidar")
    tokens = window_partition(bev.permute(0, 2, 3, 1), 4)
    mask = window_partition(valid, 4)
    mask = mask | ~mask.any(1, keepdim=True)  # an empty window attends to all (its output is dropped)
    want = window_reverse(trunk(tokens, "lidar", mask), 4, 2, 8, 12) * valid[..., None]
    torch.testing.assert_close(out, want.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def full_window_reference(trunk: Trunk, bev: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """`forward_bev` the long way: block by block on every window^2-cell window of the map, padded by the block's
    shift on the top and left (so the moved grid's windows are the padded map's windows), invalid cells masked as
    keys and left as they were."""
    from fusion.models.windows import window_partition, window_reverse

    w = trunk.window
    b, _, y, x = bev.shape
    feats = bev.permute(0, 2, 3, 1) + trunk.type_embed.weight[trunk.kinds.index(kind)]
    for block, s in zip(trunk.stacks[0], trunk.shifts, strict=True):
        pad = (s, w - s) if s else (0, 0)
        padded = torch.nn.functional.pad(feats, (0, 0, *pad, *pad))
        mask = torch.nn.functional.pad(valid, (*pad, *pad))
        py, px = padded.shape[1:3]
        tokens, keys = window_partition(padded, w), window_partition(mask, w)
        keys = keys | ~keys.any(1, keepdim=True)  # an empty window attends to all (its output is dropped)
        out = window_reverse(block(tokens, keys), w, b, py, px)[:, pad[0] : pad[0] + y, pad[0] : pad[0] + x]
        feats = torch.where(valid[..., None], out, feats)
    return (trunk.norm(feats) * valid[..., None]).permute(0, 3, 1, 2)


def test_shifted_blocks_alternate_with_unshifted_ones():
    assert Trunk(dim=16, depth=3, heads=2, window=8, shift=True).shifts == (4, 0, 4)
    assert Trunk(dim=16, depth=2, heads=2, window=8).shifts == (0, 0)


def test_shifted_bev_windows_match_full_windows_on_a_padded_map():
    torch.manual_seed(2)
    trunk = Trunk(dim=16, depth=2, heads=2, window=4, shift=True)
    bev = torch.randn(2, 16, 8, 12)
    valid = torch.rand(2, 8, 12) > 0.5
    valid[1, 2:6, 2:6] = False  # a shifted window with no valid cell
    out = trunk.forward_bev(bev, valid, "camera")
    torch.testing.assert_close(out, full_window_reference(trunk, bev, valid, "camera"), atol=1e-5, rtol=1e-5)
    unshifted = Trunk(dim=16, depth=2, heads=2, window=4)
    unshifted.load_state_dict(trunk.state_dict())  # the shift adds no weight
    want = full_window_reference(unshifted, bev, valid, "camera")
    torch.testing.assert_close(unshifted.forward_bev(bev, valid, "camera"), want, atol=1e-5, rtol=1e-5)


def test_a_shifted_one_block_trunk_reaches_across_the_other_stages_window_edge():
    """Cells 3 and 4 of a row lie in different unshifted windows of 4; the shifted block puts them in one."""
    torch.manual_seed(3)
    probe = torch.randn(16)  # not a plain sum: the channel sum of a LayerNorm output (unit weight) is constant
    for shift, reaches in ((False, False), (True, True)):
        trunk = Trunk(dim=16, depth=1, heads=2, window=4, shift=shift)
        bev = torch.randn(1, 16, 8, 8, requires_grad=True)
        out = trunk.forward_bev(bev, torch.ones(1, 8, 8, dtype=torch.bool), "lidar")
        (out[0, :, 0, 3] * probe).sum().backward()
        assert bev.grad[0, :, 0, 3].abs().sum() > 1e-3, "the cell itself must reach its output"
        assert (bev.grad[0, :, 0, 4].abs().sum() > 1e-6) == reaches
        if shift:  # the shifted window [2, 6) ends before cell 6
            assert bev.grad[0, :, 0, 6].abs().sum() == 0
