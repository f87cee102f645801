"""A Fourier Neural Operator (Li et al., ICLR 2021, arXiv 2010.08895), written here in ~100 lines.

Why not neuraloperator's ``neuralop.models.FNO``: neuraloperator 2.0.0 requires wandb (a 20 MB
wheel, its service binary and eight opentelemetry packages), tensorly and tensorly-torch, h5py,
zencfg, configmypy and pytest-mock: 27 packages for one layer type. Installing it with ``--no-deps``
does not work either: its spectral convolution imports tensorly at module level. The layer itself
is a few lines of ``torch.fft``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from datamove.models.inputs import GridInputs, check_int, check_sample_shape


class SpectralConv2d(nn.Module):
    """A linear map of the lowest Fourier modes of every channel: [batch, width, ny, nx] -> same shape.

    Keeps rows 0..m1-1 and the last m1 rows of the 2-D FFT (the positive and negative frequencies
    along y) and columns 0..m2-1 of the real FFT along x; multiplies each kept mode by its own complex
    [width, width] matrix; the other modes are zero.
    """

    def __init__(self, *, width: int, m1: int, m2: int):
        super().__init__()
        self.m1, self.m2 = m1, m2
        scale = 1.0 / (width * width)
        # [2 (positive, negative y-frequencies), in, out, m1, m2, 2 (real, imaginary)]: a real
        # parameter, seen as complex in forward, so that optimisers and the data-parallel gradient
        # average (one flat all-reduce of every gradient) see only real tensors.
        self.weight = nn.Parameter(scale * torch.rand(2, width, width, m1, m2, 2))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        ny, nx = h.shape[-2:]
        m1, m2 = self.m1, self.m2
        # rfft2 as rfft along x then fft along y, the second one on the m2 kept columns only (and
        # its inverse likewise: irfft pads the columns dropped with zeros): at 100x100 and modes
        # 12, 12 of 51 columns. In float32 even under autocast: cuFFT in half precision needs
        # power-of-two sizes.
        h_ft = torch.fft.fft(torch.fft.rfft(h.float(), dim=-1, norm="ortho")[..., :m2], dim=-2, norm="ortho")
        out = torch.zeros(h.shape[0], self.weight.shape[2], ny, m2, dtype=torch.cfloat, device=h.device)
        weight = torch.view_as_complex(self.weight.float())
        out[:, :, :m1] = torch.einsum("bixy,ioxy->boxy", h_ft[:, :, :m1], weight[0])
        out[:, :, -m1:] = torch.einsum("bixy,ioxy->boxy", h_ft[:, :, -m1:], weight[1])
        return torch.fft.irfft(torch.fft.ifft(out, dim=-2, norm="ortho"), n=nx, dim=-1, norm="ortho").to(h.dtype)


class FNO(nn.Module):
    """Lifting, ``layers`` Fourier layers, projection.

    x [batch, in_dim] (+ fields [batch, in_fields, ny, nx]) -> [batch, n_fields, ny, nx].

    The inputs become channels over the grid (:class:`~datamove.models.inputs.GridInputs`: x
    broadcast as in_dim constant channels, two coordinate channels y and x in [0, 1], then the
    fields). A 1x1 convolution lifts them to ``width`` channels; each Fourier layer is
    GELU(spectral conv(h) + 1x1 conv(h)) (no GELU after the last); the projection is 1x1 conv to
    ``2 * width`` channels, GELU, 1x1 conv to n_fields.

    The spectral path is periodic; the 1x1 path and the coordinate channels carry what is not (the
    heat problem's walls). ``modes`` is clipped to what the grid holds (ny // 2 along y, nx // 2 + 1
    along x), so any grid size works.

    Defaults (modes=12, width=20, layers=4): 924,341 parameters at 64x64, one field, in_dim 6, of
    which 921,600 are the spectral weights' (4 x 2 x 20 x 20 x 12 x 12 complex numbers); the
    count does not grow with the grid, beyond ``modes`` clipped on grids under 24x22. Width 20,
    not 32: a train step at 100x100, batch 32, costs 3x less (docs/models.md).

    Args:
        in_dim: inputs per sample (parameters + time).
        out_shape: (n_fields, ny, nx), the shape of one sample.
        modes: Fourier modes kept along each axis (positive and negative ones along y).
        width: channels of the Fourier layers.
        layers: number of Fourier layers.
        in_fields: fields of a step given with x (autoregressive samples); 0: none.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_shape: tuple[int, ...],
        modes: int = 12,
        width: int = 20,
        layers: int = 4,
        in_fields: int = 0,
    ):
        super().__init__()
        n_fields, ny, nx = check_sample_shape(out_shape)
        check_int("modes", modes)
        check_int("width", width)
        check_int("layers", layers)
        self.out_shape = (n_fields, ny, nx)
        self.inputs = GridInputs(in_dim=in_dim, in_fields=in_fields, grid=(ny, nx))
        self.modes = (max(1, min(modes, ny // 2)), min(modes, nx // 2 + 1))
        self.lift = nn.Conv2d(self.inputs.channels, width, 1)
        self.spectral = nn.ModuleList(SpectralConv2d(width=width, m1=self.modes[0], m2=self.modes[1])
                                      for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, n_fields, 1))

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim], fields [batch, in_fields, ny, nx] or None -> [batch, n_fields, ny, nx]."""
        h = self.lift(self.inputs(x, fields))
        last = len(self.spectral) - 1
        for k, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            h = spectral(h) + pointwise(h)
            if k < last:
                h = F.gelu(h)
        return self.project(h)
