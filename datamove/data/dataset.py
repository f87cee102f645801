"""The offline dataset: samples of stored member files, for a PyTorch DataLoader."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamove.config import StudyConfig
from datamove.data.files import DatasetError, open_checked
from datamove.problems.samples import SampleSpec
from datamove.streaming.contract import StreamError
from datamove.streaming.files import MemberFile


class MemberDataset(Dataset):
    """Samples of BP5 member files, indexed ``i = position * per_member + j``: the sample of the
    member at ``position`` (in ``files``) whose window starts at its 0-based step j.

    Each item is ``(x [x_dim], y [L x n_fields, ny, nx], i)``; a batch fetched by a ``DataLoader``
    (through ``__getitems__``) is ``(x [B, x_dim], y [B, L x n_fields, ny, nx], i [B])``. Samples
    are of the study's kind (``spec``, :mod:`datamove.problems.samples`), the same as the online
    trainer builds from the streams and as :meth:`SampleSpec.member_samples` cuts of a whole member:

    - direct: L = 1, y the fields of step j [n_fields, ny, nx], x = (params..., t_j)
      [n_params + 1]; ``per_member = n_steps``.
    - autoregressive: a window of L = h + n K steps j, j + s, ..., j + (L - 1) s, stacked in time
      order on the field axis [L x n_fields, ny, nx]; x = (params..., the times of the window
      positions ``spec.time_positions``) [n_params + n]; ``per_member = n_steps - (L - 1) s``.

    ``reader="memory"`` reads each member file once, whole, in each process that serves samples
    (a DataLoader worker keeps its own copy), and gathers a batch's windows in one index;
    ``reader="file"`` reads the steps of a batch with ADIOS2 step selections from files kept open
    per process, each distinct step of a batch once. Files are opened lazily in the process that
    reads them: ADIOS2 objects are never pickled or inherited.

    Use :meth:`from_config`, which refuses files that do not match the config.
    """

    def __init__(
        self, *, files: Sequence[MemberFile], x: torch.Tensor, n_steps: int, sample_shape, reader: str,
        spec: SampleSpec | None = None,
    ):
        if reader not in ("memory", "file"):
            raise ValueError(f"reader must be 'memory' or 'file', got {reader!r}")
        self.files = list(files)
        self.spec = spec or SampleSpec.make("direct", 0, n_fields=int(sample_shape[0]))
        self.x = x  # [n_members * per_member, x_dim]
        self.n_steps = n_steps
        self.per_member = self.spec.samples_per_member(n_steps)
        self.sample_shape = tuple(sample_shape)  # of one step [n_fields, ny, nx]
        self.reader = reader
        # Steps of a window from its first: 0, s, ..., (L - 1) s [L] (direct: [0]).
        self._offsets = self.spec.window_offsets() + self.spec.span
        # memory reader: every step in one tensor [members x n_steps, n_fields, ny, nx], filled member
        # by member as they are first touched, so that a batch is one gather of [B, L] rows.
        self._fields: torch.Tensor | None = None
        self._loaded = torch.zeros(len(self.files), dtype=torch.bool)

    @classmethod
    def from_config(cls, cfg: StudyConfig, *, members: Sequence[int] | None = None) -> MemberDataset:
        """The training ensemble's files in ``cfg.stream_dir``, checked against the config.

        Raises DatasetError naming the file for a missing, truncated, corrupt or mismatched member.
        """
        members = range(cfg.ensemble.n_members) if members is None else members
        spec = SampleSpec.of(cfg)
        files, xs = [], []
        for member in members:
            mf = open_checked(
                cfg, cfg.stream_dir, member, sampling=cfg.ensemble,
                missing=(f"member {member} of {cfg.ensemble.n_members}: run its simulation with stream.engine BP5 "
                         f"(`datamove simulate --config ... --member {member}`)"),
            )
            xs.append(spec.member_inputs(mf.info.params, mf.times))
            mf.close()
            files.append(mf)
        if not files:
            raise DatasetError("no member files to train on")
        return cls(files=files, x=torch.cat(xs), n_steps=cfg.problem.n_steps,
                   sample_shape=cfg.problem.sample_shape, reader=cfg.offline.reader, spec=spec)

    def __len__(self) -> int:
        return len(self.files) * self.per_member

    def _steps(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample indices [n] -> (member positions [n], 0-based steps of each window [n, L], in
        time order: j, j + s, ..., j + (L - 1) s for the window starting at j; direct: [n, 1])."""
        pos, first = idx // self.per_member, idx % self.per_member
        return pos, first[:, None] + self._offsets[None, :]

    def _load(self, positions: torch.Tensor) -> None:
        """Memory reader: read the members at ``positions`` that this process has not read yet."""
        if self._fields is None:
            self._fields = torch.empty((len(self.files) * self.n_steps, *self.sample_shape), dtype=torch.float32)
        for pos in positions[~self._loaded[positions]].unique().tolist():
            mf = self._file(pos)
            self._fields[pos * self.n_steps : (pos + 1) * self.n_steps] = torch.from_numpy(mf.read_all())
            mf.close()  # read once: the file is not needed any more
            self._loaded[pos] = True

    def _y(self, idx: torch.Tensor) -> torch.Tensor:
        """The stored y of the samples ``idx`` [n] -> [n, L x n_fields, ny, nx]."""
        pos, steps = self._steps(idx)
        rows = pos[:, None] * self.n_steps + steps  # [n, L] rows of every step in member order
        if self.reader == "memory":
            self._load(pos)
            return self._fields[rows].flatten(1, 2)  # [n, L, F, ny, nx] -> [n, L F, ny, nx]
        # file reader: windows of a batch overlap (a step is in up to L windows of its member):
        # read each distinct step once, then gather the windows from them.
        unique, where = torch.unique(rows, return_inverse=True)  # [U], [n, L] into unique
        read = torch.stack([
            torch.from_numpy(self._file(r // self.n_steps).read_step(r % self.n_steps)) for r in unique.tolist()
        ])  # [U, F, ny, nx]
        return read[where].flatten(1, 2)

    def _file(self, pos: int) -> MemberFile:
        mf = self.files[pos]
        if mf._reader is None and not (self.reader == "memory" and self._loaded[pos]):
            try:
                mf.open()
            except StreamError as exc:
                raise DatasetError(f"member file {mf.path}: {exc.reason}") from exc
        return mf

    def __getitem__(self, i: int):
        i = int(i)
        return self.x[i], self._y(torch.tensor([i]))[0], i

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.x[idx], self._y(idx), idx

    def close(self) -> None:
        for mf in self.files:
            mf.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fields"] = None  # each worker reads its own copy
        state["_loaded"] = torch.zeros(len(self.files), dtype=torch.bool)
        return state


def _as_batch(batch):
    """The dataset's ``__getitems__`` returns a whole batch already."""
    return batch


def make_loader(
    dataset: MemberDataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Shuffled every epoch, whole batches only (as the online trainer draws).

    ``world > 1``: this ``rank``'s shard of each epoch's permutation (a ``DistributedSampler`` with
    ``seed``; call ``loader.sampler.set_epoch(epoch)`` before each epoch). Shards are disjoint and of
    equal size (up to ``world - 1`` samples of a permutation are left out), so every rank runs the
    same number of batches per epoch and no rank waits in a gradient all-reduce for another.
    """
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        order = {"sampler": sampler}
        shard = len(sampler)
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
        shard = len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=shard >= batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,  # keeps each worker's open files and memory across epochs
        collate_fn=_as_batch,
        pin_memory=pin_memory,
        **order,
    )
