"""The processor layer of :class:`~datamove.models.mppde.MPPDE`, on torch_geometric's ``MessagePassing``.

A module of its own so that only building an mppde imports torch_geometric (about 3 s of import
time here), not every process that imports the model registry.

Node tensors are [batch, nodes, hidden]: one graph (the grid's) shared by every sample of a batch,
so the edge index is [2, edges] for one sample and ``node_dim=-2`` gathers and scatters along the
node axis of all samples at once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import MessagePassing


class ProcessorLayer(MessagePassing):
    """One message-passing step of Brandstetter et al. (2022), eqs. 7-8:

    m_i = mean_j phi(f_i, f_j, u_i - u_j, p_j - p_i, theta),  f_i <- norm(f_i + psi(f_i, m_i, theta)),

    phi and psi two-layer MLPs with SiLU, norm an instance norm over the nodes of each sample.
    f [batch, nodes, hidden], theta [batch, in_dim], u [batch, nodes, in_fields] or None; the edge
    index [2, edges] (row 0: source j, row 1: target i) and the edges' features rel [edges, 2].

    phi = Linear-SiLU-Linear, psi = Linear-SiLU-Linear-SiLU. The work per edge is kept to a sum and
    a SiLU (a grid has 4 or 8 times more edges than nodes, and the backward pass keeps what is
    computed per edge): phi's first Linear, of the concatenation, is the sum of a Linear of each part,
    the node parts computed once per node; its second Linear commutes with the mean, so it runs on
    the aggregated messages, once per node. (The paper's phi ends with a SiLU too; without it phi
    costs a third of the time and memory.)
    """

    def __init__(self, *, hidden: int, in_dim: int, in_fields: int):
        super().__init__(aggr="mean", node_dim=-2)
        self.msg_i = nn.Linear(hidden, hidden)
        self.msg_j = nn.Linear(hidden, hidden, bias=False)
        self.msg_theta = nn.Linear(in_dim, hidden, bias=False)
        self.msg_rel = nn.Linear(2, hidden, bias=False)
        self.msg_u = nn.Linear(in_fields, hidden, bias=False) if in_fields else None
        self.msg_out = nn.Linear(hidden, hidden)
        self.update_mlp = nn.Sequential(
            nn.Linear(2 * hidden + in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.norm = nn.InstanceNorm1d(hidden, affine=True)

    def forward(
        self, f: torch.Tensor, theta: torch.Tensor, u: torch.Tensor | None, edge_index: torch.Tensor,
        rel: torch.Tensor,
    ) -> torch.Tensor:
        a = self.msg_i(f) + self.msg_theta(theta)[:, None, :]
        b = self.msg_j(f)
        if self.msg_u is not None:
            wu = self.msg_u(u)  # W (u_i - u_j) = W u_i - W u_j
            a, b = a + wu, b - wu
        m = self.msg_out(self.propagate(edge_index, a=a, b=b, rel=self.msg_rel(rel)))
        theta_nodes = theta[:, None, :].expand(-1, f.shape[1], -1)
        f = f + self.update_mlp(torch.cat([f, m, theta_nodes], dim=-1))
        return self.norm(f.transpose(1, 2)).transpose(1, 2)

    def message(self, a_i: torch.Tensor, b_j: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """a_i, b_j [batch, edges, hidden], rel [edges, hidden] -> messages [batch, edges, hidden]."""
        return F.silu(a_i + b_j + rel)
