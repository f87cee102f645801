"""A message-passing PDE solver in the manner of Brandstetter, Worrall and Welling (ICLR 2022,
arXiv 2202.03376): encoder, message passing over the grid's graph, decoder.

The message passing uses torch_geometric (``MessagePassing``, see
:mod:`datamove.models.message_passing`): it installs with plain pip, pulls no other torch, and is the
library the paper's code is written on.

Differences from the paper, for DATAMOVE's samples: the graph is the grid's (each node linked to its
4 or 8 neighbours, not a radius graph); the edges' features are the neighbour's offset in grid steps;
a direct sample has no fields of an earlier step (u), so the node inputs are the parameters and t
broadcast over the grid and the node's coordinates; the decoder is a per-node MLP to the n_fields
of one step, not a 1-D convolution over a bundle of future steps.
"""

from __future__ import annotations

import torch
from torch import nn

from datamove.models.inputs import GridInputs, check_int, check_sample_shape


# Elements of one [batch, edges, hidden] tensor at most when evaluating (2**26 float32: 256 MB).
EVAL_ELEMENTS = 2**26


def grid_graph(ny: int, nx: int, neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges of an ny x nx grid (node index iy * nx + ix), both directions, no wrap-around.

    Returns the edge index [2, edges] (row 0: source j, row 1: target i) and each edge's offset
    p_j - p_i in grid steps, (dy, dx), [edges, 2].
    """
    offsets = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if neighbours == 8:
        offsets += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    node = torch.arange(ny * nx).view(ny, nx)
    sources, targets, rel = [], [], []
    for dy, dx in offsets:
        # Targets i whose neighbour j = i + (dy, dx) lies inside the grid.
        tgt = node[max(0, -dy): ny - max(0, dy), max(0, -dx): nx - max(0, dx)].reshape(-1)
        targets.append(tgt)
        sources.append(tgt + dy * nx + dx)
        rel.append(torch.tensor([[float(dy), float(dx)]]).expand(tgt.numel(), 2))
    return torch.stack([torch.cat(sources), torch.cat(targets)]), torch.cat(rel)


class MPPDE(nn.Module):
    """Encoder - ``layers`` processor layers - decoder, on the graph of the sample's grid.

    x [batch, in_dim] (+ fields [batch, in_fields, ny, nx]) -> [batch, n_fields, ny, nx].

    Node inputs: the channels of :class:`~datamove.models.inputs.GridInputs` at each node (x
    broadcast as in_dim constant channels, the coordinates y and x in [0, 1], then the fields).
    Encoder: a two-layer MLP to ``hidden`` features per node. Processor: ``layers`` of
    :class:`~datamove.models.message_passing.ProcessorLayer` (messages from the neighbours, mean
    aggregation, residual update, instance norm; each conditioned on x, the paper's theta; with
    in_fields > 0, messages also see u_i - u_j, the fields' differences). Decoder: a two-layer MLP
    from ``hidden`` to n_fields per node.

    Every layer works on batch x nodes x hidden and batch x edges x hidden tensors (edges ~
    neighbours x ny x nx), in time and in memory kept for the backward pass: the costliest of the
    registry's models at a given grid and batch (docs/models.md has the measured costs).

    Defaults (hidden=32, layers=4, neighbours=4): 29,569 parameters at any grid, one field, in_dim 6.

    Args:
        in_dim: inputs per sample (parameters + time).
        out_shape: (n_fields, ny, nx), the shape of one sample; ny x nx >= 2.
        hidden: features per node.
        layers: processor layers (message-passing steps).
        neighbours: 4 (edges along the axes) or 8 (and the diagonals).
        in_fields: fields of a step given with x (autoregressive samples); 0: none.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_shape: tuple[int, ...],
        hidden: int = 32,
        layers: int = 4,
        neighbours: int = 4,
        in_fields: int = 0,
    ):
        super().__init__()
        from datamove.models.message_passing import ProcessorLayer  # imports torch_geometric

        n_fields, ny, nx = check_sample_shape(out_shape)
        if ny * nx < 2:
            raise ValueError(f"out_shape {tuple(out_shape)}: a grid of one node has no edges")
        check_int("hidden", hidden)
        check_int("layers", layers)
        if neighbours not in (4, 8):
            raise ValueError(f"neighbours must be 4 or 8, got {neighbours!r}")
        self.out_shape = (n_fields, ny, nx)
        self.inputs = GridInputs(in_dim=in_dim, in_fields=in_fields, grid=(ny, nx))
        edge_index, rel = grid_graph(ny, nx, neighbours)
        # Not persistent: rebuilt from the shape, so that checkpoints hold weights only.
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("rel", rel, persistent=False)
        self.encoder = nn.Sequential(
            nn.Linear(self.inputs.channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.processor = nn.ModuleList(
            ProcessorLayer(hidden=hidden, in_dim=in_dim, in_fields=in_fields) for _ in range(layers)
        )
        self.decoder = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_fields))

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim], fields [batch, in_fields, ny, nx] or None -> [batch, n_fields, ny, nx]."""
        if not torch.is_grad_enabled():
            # Evaluation goes over whole sets in batches of 1,024 (training.step.evaluate): at 100x100
            # one [batch, edges, hidden] tensor alone would be 5 GB. Same result, in chunks.
            per_sample = self.edge_index.shape[1] * self.processor[0].msg_i.out_features if self.processor else 1
            chunk = max(1, EVAL_ELEMENTS // per_sample)
            if x.shape[0] > chunk:
                parts = [
                    self._forward(x[i: i + chunk], None if fields is None else fields[i: i + chunk])
                    for i in range(0, x.shape[0], chunk)
                ]
                return torch.cat(parts)
        return self._forward(x, fields)

    def _forward(self, x: torch.Tensor, fields: torch.Tensor | None) -> torch.Tensor:
        n_fields, ny, nx = self.out_shape
        batch = x.shape[0]
        nodes = self.inputs(x, fields).flatten(2).transpose(1, 2)  # [batch, ny * nx, channels]
        u = fields.flatten(2).transpose(1, 2).to(x.dtype) if fields is not None else None
        f = self.encoder(nodes)
        rel = self.rel.to(x.dtype)
        for layer in self.processor:
            f = layer(f, x, u, self.edge_index, rel)
        return self.decoder(f).transpose(1, 2).reshape(batch, n_fields, ny, nx)
