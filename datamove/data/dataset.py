"""The offline dataset: samples of stored member files, for a PyTorch DataLoader."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamove.config import StudyConfig
from datamove.data.files import DatasetError, open_checked
from datamove.streaming.contract import StreamError
from datamove.streaming.files import MemberFile
from datamove.training.inputs import direct_inputs


class MemberDataset(Dataset):
    """Samples of BP5 member files, indexed ``i = position * n_steps + step``.

    Each item is ``(x [n_inputs], y [n_fields, ny, nx], i)``; a batch fetched by a ``DataLoader``
    (through ``__getitems__``) is ``(x [B, n_inputs], y [B, n_fields, ny, nx], i [B])``.

    ``reader="memory"`` reads each member file once, whole, in each process that serves samples
    (a DataLoader worker keeps its own copy); ``reader="file"`` reads every sample with an ADIOS2
    step selection from files kept open per process. Files are opened lazily in the process that
    reads them: ADIOS2 objects are never pickled or inherited.

    Use :meth:`from_config`, which refuses files that do not match the config.
    """

    def __init__(self, *, files: Sequence[MemberFile], x: torch.Tensor, n_steps: int, sample_shape, reader: str):
        if reader not in ("memory", "file"):
            raise ValueError(f"reader must be 'memory' or 'file', got {reader!r}")
        self.files = list(files)
        self.x = x  # [n_members * n_steps, n_inputs]
        self.n_steps = n_steps
        self.sample_shape = tuple(sample_shape)
        self.reader = reader
        # memory reader: every sample in one tensor [len, n_fields, ny, nx], filled member by member
        # as they are first touched, so that a batch is one gather (as from the online reservoir).
        self._fields: torch.Tensor | None = None
        self._loaded = torch.zeros(len(self.files), dtype=torch.bool)

    @classmethod
    def from_config(cls, cfg: StudyConfig, *, members: Sequence[int] | None = None) -> MemberDataset:
        """The training ensemble's files in ``cfg.stream_dir``, checked against the config.

        Raises DatasetError naming the file for a missing, truncated, corrupt or mismatched member.
        """
        members = range(cfg.ensemble.n_members) if members is None else members
        files, xs = [], []
        for member in members:
            mf = open_checked(
                cfg, cfg.stream_dir, member, sampling=cfg.ensemble,
                missing=(f"member {member} of {cfg.ensemble.n_members}: run its simulation with stream.engine BP5 "
                         f"(`datamove simulate --config ... --member {member}`)"),
            )
            xs.append(direct_inputs(mf.info.params, mf.times))
            mf.close()
            files.append(mf)
        if not files:
            raise DatasetError("no member files to train on")
        return cls(files=files, x=torch.cat(xs), n_steps=cfg.problem.n_steps,
                   sample_shape=cfg.problem.sample_shape, reader=cfg.offline.reader)

    def __len__(self) -> int:
        return len(self.files) * self.n_steps

    def _load(self, positions: torch.Tensor) -> None:
        """Memory reader: read the members at ``positions`` that this process has not read yet."""
        if self._fields is None:
            self._fields = torch.empty((len(self), *self.sample_shape), dtype=torch.float32)
        for pos in positions[~self._loaded[positions]].unique().tolist():
            mf = self._file(pos)
            self._fields[pos * self.n_steps : (pos + 1) * self.n_steps] = torch.from_numpy(mf.read_all())
            mf.close()  # read once: the file is not needed any more
            self._loaded[pos] = True

    def _field(self, i: int) -> torch.Tensor:
        pos, step = divmod(i, self.n_steps)
        if self.reader == "memory":
            self._load(torch.tensor([pos]))
            return self._fields[i]
        return torch.from_numpy(self._file(pos).read_step(step))

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
        return self.x[i], self._field(i), i

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.reader == "memory":
            self._load(idx // self.n_steps)
            return self.x[idx], self._fields[idx], idx
        y = torch.stack([self._field(int(i)) for i in indices])
        return self.x[idx], y, idx

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
