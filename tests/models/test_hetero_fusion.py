import os
import subprocess
import sys

import pytest
import torch

from fusion.models.hetero_fusion import HeteroFusion
from fusion.models.hetero_graph import build_graph
from fusion.models.node_types import EDGE_TYPES


def _inputs(seed: int = 0, b: int = 2, y: int = 8, x: int = 8, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    bev = {t: torch.randn(b, dim, y, x, generator=g) for t in ("camera", "lidar")}
    valid = {"camera": torch.rand(b, y, x, generator=g) > 0.3, "lidar": torch.rand(b, y, x, generator=g) > 0.6}
    return bev, valid


def _fusion(seed: int = 0, merge: str = "mean") -> HeteroFusion:
    torch.manual_seed(seed)
    fusion = HeteroFusion(dim=16, depth=2, heads=2, window=4, merge=merge)
    with torch.no_grad():  # move every weight off its initial value so that each type pair differs
        for p in fusion.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return fusion


@pytest.mark.parametrize("merge", ["mean", "project"])
@pytest.mark.parametrize("absent", [None, "camera", "lidar"])
def test_graph_and_dense_paths_agree(absent, merge):
    fusion = _fusion(merge=merge)
    bev, valid = _inputs()
    if absent:
        valid[absent][:] = False
    dense, graph = fusion.forward_dense(bev, valid), fusion.forward_graph(bev, valid)
    for t in ("camera", "lidar"):
        torch.testing.assert_close(dense[t], graph[t], atol=1e-5, rtol=0)
        assert dense[t].abs().sum(-1)[~valid[t]].max() == 0
    fusion.backend = "graph"
    from_graph = fusion(bev, valid)
    fusion.backend = "dense"
    torch.testing.assert_close(fusion(bev, valid), from_graph, atol=1e-5, rtol=0)


@pytest.mark.parametrize("merge", ["mean", "project"])
def test_gradients_agree_between_paths(merge):
    bev, valid = _inputs(seed=1)
    grads = []
    for backend in ("dense", "graph"):
        fusion = _fusion(merge=merge)
        fusion.backend = backend
        fusion(bev, valid).square().sum().backward()
        grads.append({n: p.grad for n, p in fusion.named_parameters()})
    assert all(g is not None and g.abs().sum() > 0 for g in grads[0].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], atol=1e-4, rtol=1e-4)


def test_graph_edges_join_every_pair_in_each_window_and_grid_group():
    bev, valid = _inputs()
    data = build_graph(bev, valid, window=4)
    assert set(data.edge_types) == set(EDGE_TYPES)
    for rel, groups in (("local", lambda v: v.view(2, 2, 4, 2, 4)), ("grid", lambda v: v.view(2, 4, 2, 4, 2))):
        for s, t in (("camera", "lidar"), ("lidar", "lidar")):
            if rel == "local":
                n_s = groups(valid[s]).sum((2, 4))  # valid cells per window
                n_t = groups(valid[t]).sum((2, 4))
            else:
                n_s = groups(valid[s]).sum((1, 3))  # valid cells per dilated group
                n_t = groups(valid[t]).sum((1, 3))
            assert data[s, rel, t].edge_index.shape[1] == int((n_s * n_t).sum())
    # a dilated grid group spans the map: its cells are 2 apart in an 8x8 map with 4x4 groups
    cells = data["lidar"].cell
    src, dst = data["lidar", "grid", "lidar"].edge_index
    dy = (cells[src] // 8 % 8 - cells[dst] // 8 % 8).abs()
    assert (dy % 2 == 0).all() and dy.max() == 6


@pytest.mark.parametrize("merge", ["mean", "project"])
@pytest.mark.parametrize("absent", [None, "camera", "lidar"])
def test_fusion_output_merges_present_types_cell_by_cell(absent, merge):
    """The fused map against a loop over cells: the mean of the node types present there, or the sum of their own
    projections; zero where no type is."""
    fusion = _fusion(merge=merge)
    bev, valid = _inputs()
    if absent:
        valid[absent][:] = False
    nodes = fusion.forward_dense(bev, valid)  # per type <B, Y, X, C>
    fused = fusion(bev, valid)
    b, _, y, x = fused.shape
    for i in range(b):
        for r in range(y):
            for c in range(x):
                present = [t for t in ("camera", "lidar") if valid[t][i, r, c]]
                if merge == "project":
                    parts = [fusion.project[t](nodes[t][i, r, c]) for t in present]
                    want = torch.stack(parts).sum(0) if parts else torch.zeros(16)
                else:
                    want = torch.stack([nodes[t][i, r, c] for t in present]).mean(0) if present else torch.zeros(16)
                torch.testing.assert_close(fused[i, :, r, c], want, atol=1e-6, rtol=1e-5)
    valid = {t: torch.zeros_like(v) for t, v in valid.items()}
    assert fusion(bev, valid).abs().sum() == 0


def test_projections_start_as_identity():
    """Before training, `project` sums the types present at a cell unchanged: a lone type passes through as with
    the mean, and a cell with both holds twice their mean."""
    torch.manual_seed(0)
    project, mean = HeteroFusion(dim=16, depth=1, heads=2, merge="project"), HeteroFusion(dim=16, depth=1, heads=2)
    mean.load_state_dict(project.state_dict(), strict=False)  # the same blocks and norms; `project` has the maps
    bev, valid = _inputs()
    count = sum(v.float() for v in valid.values())[:, None]  # (B, 1, Y, X) types per cell
    torch.testing.assert_close(project(bev, valid), mean(bev, valid) * count, atol=1e-6, rtol=1e-5)


def test_unknown_merge_is_refused():
    with pytest.raises(ValueError, match="merge"):
        HeteroFusion(dim=16, merge="max")


def test_cpu_attention_matches_scaled_dot_product_attention():
    """The CPU path of the dense fusion's attention (baddbmm, softmax, bmm) against SDPA with the same additive bias,
    padded keys included (the finite minimum the fusion puts there), values and gradients."""
    import torch.nn.functional as F

    from fusion.models.hetero_attention import biased_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    k2, v2 = (torch.randn(5, 2, 4, 8, generator=g, requires_grad=True) for _ in range(2))
    keys, values = torch.cat([k, k2], 2), torch.cat([v, v2], 2)  # 11 keys, 7 queries
    bias = (torch.randn(5, 2, 7, 11, generator=g) * 0.5).requires_grad_()
    padded = bias.masked_fill(torch.arange(11) >= 9, torch.finfo(bias.dtype).min)  # the last two keys are padding
    ours = biased_attention(q, keys, values, padded)
    ref = F.scaled_dot_product_attention(q, keys, values, attn_mask=padded)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), (q, k, v2, bias), retain_graph=True) for out in (ours, ref)]
    for mine, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_building_the_fusion_leaves_no_generated_file_in_the_temporary_directory(tmp_path):
    """torch-geometric writes each MessagePassing class's generated `propagate` to the temporary directory and keeps
    the file; a fresh process (the generated module is cached per process) must build and run the graph path and
    leave the directory empty."""
    script = (
        "import torch\n"
        "from fusion.models.hetero_fusion import HeteroFusion\n"
        "f = HeteroFusion(dim=8, depth=1, heads=2, window=2)\n"
        "bev = {t: torch.randn(1, 8, 4, 4) for t in ('camera', 'lidar')}\n"
        "valid = {t: torch.ones(1, 4, 4, dtype=torch.bool) for t in ('camera', 'lidar')}\n"
        "out = f.forward_graph(bev, valid)\n"
        "torch.testing.assert_close(out['lidar'], f.forward_dense(bev, valid)['lidar'], atol=1e-5, rtol=0)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert not list(tmp_path.iterdir())


AGENT = "agent_lidar"  # a cooperative agent's LiDAR map, a third node type (not in the detector's vocabulary)


def test_a_third_node_type_gets_its_own_pair_weights_and_both_paths_agree():
    """The fusion takes any node-type vocabulary: with a third type (HM-ViT's other agents) each of the nine ordered
    type pairs has its own attention, message and prior weights, the graph and dense paths agree with every type and
    with the new one absent, and its nodes send messages to and receive them from the others."""
    torch.manual_seed(0)
    types = ("camera", "lidar", AGENT)
    fusion = HeteroFusion(dim=16, depth=2, heads=2, window=4, node_types=types, merge="project")
    with torch.no_grad():
        for p in fusion.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    attn = fusion.blocks[0].attn["local"]
    assert sorted(attn.w_att) == sorted(f"{s}__{t}" for s in types for t in types)
    bev, valid = _inputs()
    g = torch.Generator().manual_seed(5)
    bev[AGENT], valid[AGENT] = torch.randn(2, 16, 8, 8, generator=g), torch.rand(2, 8, 8, generator=g) > 0.5
    for absent in (None, AGENT):
        v = dict(valid, **{AGENT: torch.zeros_like(valid[AGENT])}) if absent else valid
        dense, graph = fusion.forward_dense(bev, v), fusion.forward_graph(bev, v)
        for t in types:
            torch.testing.assert_close(dense[t], graph[t], atol=1e-5, rtol=0)
    # the agent's nodes reach the camera's and are reached by them: their pair weights get a gradient
    fusion(bev, valid).square().sum().backward()
    for pair in (f"{AGENT}__camera", f"camera__{AGENT}", f"{AGENT}__{AGENT}"):
        assert attn.w_att[pair].grad.abs().sum() > 0 and attn.w_msg[pair].grad.abs().sum() > 0, pair


def test_an_absent_third_node_type_leaves_the_two_type_fusion_unchanged():
    """A two-type checkpoint loads into a fusion with a third type (its new weights aside) and, while no node of the
    new type is present, fuses exactly as before: adding an agent type costs the existing settings nothing."""
    two = _fusion(merge="project")
    three = HeteroFusion(dim=16, depth=2, heads=2, window=4, node_types=("camera", "lidar", AGENT), merge="project")
    missing, unexpected = three.load_state_dict(two.state_dict(), strict=False)
    assert not unexpected and missing and all(AGENT in name for name in missing)
    bev, valid = _inputs()
    bev[AGENT], valid[AGENT] = torch.randn(2, 16, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(three(bev, valid), two(bev, valid), atol=1e-6, rtol=0)
