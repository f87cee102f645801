"""The offline dataset: samples of stored member files, for a PyTorch DataLoader."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamove.config import StudyConfig
from datamove.data.files import DatasetError, open_checked
from datamove.problems.samples import SampleSpec, direct_inputs
from datamove.streaming.contract import StreamError
from datamove.streaming.files import MemberFile


class MemberDataset(Dataset):
    """Samples of BP5 member files, indexed ``i = position * per_member + j``.

    Each item is ``(x [n_inputs], y [stored fields, ny, nx], i)``; a batch fetched by a ``DataLoader``
    (through ``__getitems__``) is ``(x [B, n_inputs], y [B, stored fields, ny, nx], i [B])``. Samples
    are of the study's kind (``spec``, :mod:`datamove.problems.samples`): direct, y the fields of step
    j [n_fields, ny, nx], ``per_member = n_steps``; or autoregressive with stride s, y the fields of
    steps j and j + s of one member [2 n_fields, ny, nx], ``per_member = n_steps - s``: the same
    pairs as the online trainer builds from the streams.

    ``reader="memory"`` reads each member file once, whole, in each process that serves samples
    (a DataLoader worker keeps its own copy); ``reader="file"`` reads every step with an ADIOS2
    step selection from files kept open per process. Files are opened lazily in the process that
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
        self.x = x  # [n_members * per_member, n_inputs]
        self.n_steps = n_steps
        self.per_member = self.spec.samples_per_member(n_steps)
        self.sample_shape = tuple(sample_shape)  # of one step [n_fields, ny, nx]
        self.reader = reader
        # memory reader: every step in one tensor [members x n_steps, n_fields, ny, nx], filled member
        # by member as they are first touched, so that a batch is one gather (as from the online
        # reservoir), two for pairs.
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
            xs.append(direct_inputs(mf.info.params, mf.times[: spec.samples_per_member(len(mf.times))]))
            mf.close()
            files.append(mf)
        if not files:
            raise DatasetError("no member files to train on")
        return cls(files=files, x=torch.cat(xs), n_steps=cfg.problem.n_steps,
                   sample_shape=cfg.problem.sample_shape, reader=cfg.offline.reader, spec=spec)

    def __len__(self) -> int:
        return len(self.files) * self.per_member

    def _steps(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample indices [n] -> (member positions, 0-based input steps) [n]; the target step is
        the input step + stride (the same step for direct samples)."""
        return idx // self.per_member, idx % self.per_member

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
        """The stored y of the samples ``idx`` [n] -> [n, stored fields, ny, nx]."""
        pos, step = self._steps(idx)
        targets = step + self.spec.stride
        if self.reader == "memory":
            self._load(pos)
            rows = pos * self.n_steps
            y = self._fields[rows + targets]
            return torch.cat([self._fields[rows + step], y], dim=1) if self.spec.autoregressive else y
        read = lambda p, k: torch.from_numpy(self._file(p).read_step(k))  # noqa: E731
        pairs = zip(pos.tolist(), step.tolist(), targets.tolist())
        if self.spec.autoregressive:
            return torch.stack([torch.cat([read(p, k), read(p, t)]) for p, k, t in pairs])
        return torch.stack([read(p, t) for p, _, t in pairs])

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
