"""Heterogeneous graph attention (HM-ViT, Xiang et al. 2023; HGT, Hu et al. 2020), with a graph and a dense path.

Nodes are BEV cells typed by modality. Each node type has its own Q/K/V/output projections; each (source, target)
type pair has its own attention matrix `w_att`, message matrix `w_msg` and per-head prior, so for a target node i of
type t and a source node j of type s:

    score_ij = (q_t(x_i) . w_att[s, t] k_s(x_j)) * prior[s, t] / sqrt(d) + rel_bias[offset(i, j)]
    out_i    = o_t( sum_j softmax_j(score_ij) * w_msg[s, t] v_s(x_j) )

with the softmax over all incoming edges of i, whatever their source type. `forward` runs it as a torch-geometric
`MessagePassing` on `x_dict` / `edge_index_dict` (like `HGTConv`); `forward_dense` runs the same maths on each
group's nodes packed side by side (`pack_windows`) with masks. Both read the same parameters.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from fusion.models.node_types import NODE_TYPES, pair_key
from fusion.models.windows import PackedWindows, gather_nodes, relative_position_index, scatter_nodes


def delete_generated_sources(layer: MessagePassing) -> None:
    """Delete the .py files that torch-geometric generated for `layer`'s class, once they are imported.

    `MessagePassing.__init__` renders an optimised `propagate` for each class from a template, writes it to a file in
    the temporary directory and imports it (`torch_geometric.template.module_from_template`), and never deletes the
    file: each process that builds the model left 10 KB in /tmp (over 300 files after a day of runs and tests). The
    imported code does not read its file again; only `torch.jit.script`, which this project does not use, would."""
    tmp = os.path.realpath(tempfile.gettempdir())
    for name in ("propagate", "edge_updater"):
        path = getattr(sys.modules.get(getattr(layer, name).__module__), "__file__", None)
        if path and os.path.dirname(os.path.realpath(path)) == tmp and os.path.isfile(path):
            os.remove(path)


class HeteroAttention(MessagePassing):
    def __init__(self, dim: int = 64, heads: int = 4, window: int = 4, node_types: tuple[str, ...] = NODE_TYPES):
        super().__init__(aggr="add", node_dim=0)
        delete_generated_sources(self)
        assert dim % heads == 0, f"dim {dim} is not divisible by heads {heads}"
        self.heads, self.head_dim, self.node_types = heads, dim // heads, tuple(node_types)
        # every ordered (source, target) pair of this module's node types, so that a vocabulary with more types (a
        # cooperative agent's LiDAR, say) gets its own weights for each new pair; (camera, lidar) gives TYPE_PAIRS
        self.pairs = tuple((s, t) for s in self.node_types for t in self.node_types)
        self.q, self.k, self.v, self.o = (
            nn.ModuleDict({t: nn.Linear(dim, dim) for t in self.node_types}) for _ in range(4)
        )
        eye = torch.eye(self.head_dim).repeat(heads, 1, 1)  # (nh, hs, hs): start as plain attention
        self.w_att = nn.ParameterDict({pair_key(s, t): nn.Parameter(eye.clone()) for s, t in self.pairs})
        self.w_msg = nn.ParameterDict({pair_key(s, t): nn.Parameter(eye.clone()) for s, t in self.pairs})
        self.prior = nn.ParameterDict({pair_key(s, t): nn.Parameter(torch.ones(heads)) for s, t in self.pairs})
        self.rel_bias = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)  # Swin's bias table
        self.register_buffer("rel_index", relative_position_index(window), persistent=False)  # (T, T)

    def _project(self, x_dict: dict[str, torch.Tensor]):
        """q per target type and k, v per (source, target) pair, all <..., nh, hs>."""
        split = lambda y: y.unflatten(-1, (self.heads, self.head_dim))  # noqa: E731  (..., C) -> (..., nh, hs)
        q = {t: split(self.q[t](x)) for t, x in x_dict.items()}
        k, v = {}, {}
        for s, t in self.pairs:
            if s in x_dict and t in x_dict:
                key = pair_key(s, t)
                k[s, t] = torch.einsum("...hd,hde->...he", split(self.k[s](x_dict[s])), self.w_att[key])
                v[s, t] = torch.einsum("...hd,hde->...he", split(self.v[s](x_dict[s])), self.w_msg[key])
        return q, k, v

    # ---- graph path -------------------------------------------------------------------------------------------
    def forward(self, x_dict: dict[str, torch.Tensor], edge_index_dict: dict[tuple[str, str, str], torch.Tensor],
                rel_dict: dict[tuple[str, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:  # fmt: skip
        """x_dict: <N_t, C> per node type; edge_index_dict: <2, E> (source, target) per (src, relation, dst) edge
        type; rel_dict: <int64: E> the relative-position index of each edge. Returns <N_t, C> per node type."""
        q, k, v = self._project(x_dict)
        out = {}
        for t, x in x_dict.items():
            # one bipartite graph per target type: the sources of all types stacked, as HGTConv does
            ks, vs, edges, bias, prior, offset = [], [], [], [], [], 0
            for (s, rel, dst), edge_index in edge_index_dict.items():
                if dst != t or (s, t) not in k:
                    continue
                ks.append(k[s, t]), vs.append(v[s, t])
                edges.append(edge_index + torch.tensor([[offset], [0]], device=edge_index.device))
                bias.append(self.rel_bias[rel_dict[s, rel, dst]])  # (E, nh)
                prior.append(self.prior[pair_key(s, t)].expand(edge_index.shape[1], -1))
                offset += len(k[s, t])
            if not edges:
                out[t] = self.o[t](torch.zeros_like(x))  # no incoming edge: nothing to aggregate
                continue
            y = self.propagate(torch.cat(edges, 1), q=q[t], k=torch.cat(ks), v=torch.cat(vs), bias=torch.cat(bias),
                               prior=torch.cat(prior), size=(offset, len(x)))  # fmt: skip
            out[t] = self.o[t](y.flatten(1))  # (N_t, C)
        return out

    def message(
        self,
        q_i: torch.Tensor,
        k_j: torch.Tensor,
        v_j: torch.Tensor,
        bias: torch.Tensor,
        prior: torch.Tensor,
        index: torch.Tensor,
        ptr: torch.Tensor | None,
        size_i: int | None,
    ) -> torch.Tensor:
        score = (q_i * k_j).sum(-1) * prior / math.sqrt(self.head_dim) + bias  # (E, nh)
        alpha = softmax(score, index, ptr, size_i)  # over the incoming edges of each target node
        return v_j * alpha[..., None]  # (E, nh, hs)

    # ---- dense path -------------------------------------------------------------------------------------------
    def _folded(self, s: str, t: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The key and value projections of source type s as target type t sees them, one linear layer each: w_att
        (and the prior, per head) folded into k_s, w_msg into v_s. Returns (k weight, k bias, v weight, v bias)."""
        key = pair_key(s, t)
        att, msg = torch.block_diag(*self.w_att[key]), torch.block_diag(*self.w_msg[key])  # (C, C) block-diagonal
        prior = self.prior[key].repeat_interleave(self.head_dim)  # (C,) per output channel
        k, v = self.k[s], self.v[s]
        return ((att.T @ k.weight) * prior[:, None], (k.bias @ att) * prior, msg.T @ v.weight, v.bias @ msg)

    def forward_dense(
        self, x_dict: dict[str, torch.Tensor], windows: dict[str, PackedWindows]
    ) -> dict[str, torch.Tensor]:
        """x_dict: <N_t, C> per node type; windows: the nodes of each type packed into this relation's groups
        (`pack_windows`). Returns <N_t, C> per node type.

        The same maths as the graph path on `scaled_dot_product_attention`, group by group: for each target type, the
        groups holding one of its nodes; queries its packed nodes, keys and values the packed nodes of every source
        type side by side (<A, nh, sum K_s, hs>), with the relative-position bias and the padding as one additive
        mask. Projections run on the nodes, before packing."""
        heads = lambda y: y.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # noqa: E731 (A, nh, K, hs)
        span = self.rel_index.shape[0]  # T = window^2 positions
        # the bias between every two positions <T, nh, T + 1>, with one more column for padded keys: bias and padding
        # mask come out of one gather
        bias = self.rel_bias[self.rel_index].permute(0, 2, 1)
        bias = torch.cat([bias, bias.new_full((span, self.heads, 1), torch.finfo(bias.dtype).min)], 2)
        out = {}
        for t, x in x_dict.items():
            sources = [s for s, dst in self.pairs if dst == t and s in x_dict and len(x_dict[s])]
            if not len(x) or not sources:
                out[t] = self.o[t](torch.zeros_like(x))  # no node, or nothing to aggregate
                continue
            target = windows[t]
            active = target.occupied()  # the groups holding a node of type t
            slot, token = target.node[active], target.token[active]  # (A, K_t)
            ks, vs, key_tokens = [], [], []
            for s in sources:
                k_w, k_b, v_w, v_b = self._folded(s, t)
                nodes = windows[s].node[active]  # (A, K_s)
                ks.append(gather_nodes(F.linear(x_dict[s], k_w, k_b), nodes))
                vs.append(gather_nodes(F.linear(x_dict[s], v_w, v_b), nodes))
                key_tokens.append(windows[s].token[active].masked_fill(nodes < 0, span))
            key_tokens = torch.cat(key_tokens, 1)  # (A, S) with S = sum K_s; the padding column at padded keys
            a, k_t, n_keys = *token.shape, key_tokens.shape[1]
            rows = bias.index_select(0, token.flatten()).view(a, k_t, self.heads, span + 1).transpose(1, 2)
            mask = rows.gather(3, key_tokens[:, None, None, :].expand(a, self.heads, k_t, n_keys))  # (A, nh, K_t, S)
            q = gather_nodes(self.q[t](x), slot)  # (A, K_t, C)
            k, v = heads(torch.cat(ks, 1)), heads(torch.cat(vs, 1))  # (A, nh, S, hs)
            y = biased_attention(heads(q), k, v, mask.to(q.dtype))  # (A, nh, K_t, hs)
            out[t] = self.o[t](scatter_nodes(y.transpose(1, 2).flatten(2), slot, len(x)))  # (N_t, C)
        return out


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q <A, nh, K, d>, k / v <A, nh, S, d>, bias <A, nh, K, S>.

    `scaled_dot_product_attention`, except in training on the CPU: there a bias that needs a gradient sends it down
    its reference path, which also screens the scores for rows masked in full (three more passes over them, a fifth
    of the fusion's time). No row here is: every query is among its own keys, and padding gets a finite minimum, not
    -inf. So in that case one `baddbmm` (scores plus bias), a softmax and a `bmm`, the same maths (tested). Without a
    gradient, SDPA's fused CPU kernel is faster than both."""
    if q.device.type != "cpu" or not (bias.requires_grad and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    a, h, n, d = q.shape
    scores = torch.baddbmm(bias.reshape(a * h, n, -1), q.reshape(a * h, n, d), k.reshape(a * h, -1, d).transpose(1, 2),
                           alpha=d**-0.5)  # fmt: skip
    return torch.bmm(scores.softmax(-1), v.reshape(a * h, -1, d)).view(a, h, n, d)
