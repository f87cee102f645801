"""Random access to member files written with BP5 (the stream contract on disk).

The offline trainer reads samples in any order: one step of one member at a time (an ADIOS2 step
selection, ~16 us for a 100x100 field from the page cache), or a whole member at once. Each
``MemberFile`` owns its ADIOS2 objects; open it in the process that reads it (a DataLoader worker),
never pickle an open one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import adios2
import numpy as np

from collections.abc import Sequence

from datamove.streaming.contract import TIME, ContractError, StreamError
from datamove.streaming.reader import MemberInfo, member_info


class MemberFile:
    """One member's BP5 file, opened for random access.

    Args:
        path: the member's ``.bp`` folder.
        member: its id (checked against the ``member`` attribute).
        fields: the field variables to read, in the order of a sample's first axis.

    Attributes after :meth:`open`: ``info`` (validated attributes), ``n_steps``, ``field_shape``
    (ny, nx) and ``times`` (float64 [n_steps]).

    Raises (from :meth:`open`): StreamError naming the file when it is missing or unreadable,
    ContractError when it does not follow the stream contract.
    """

    def __init__(self, path: str | Path, member: int, *, fields: Sequence[str]):
        self.path = Path(path)
        self.member = member
        self.fields = tuple(fields)
        self.info: MemberInfo | None = None
        self.n_steps = 0
        self.field_shape: tuple[int, ...] = ()
        self.times = np.empty(0)
        self._adios: adios2.Adios | None = None
        self._reader: adios2.FileReader | None = None

    def open(self) -> MemberFile:
        if not self.path.exists():
            raise StreamError(self.member, f"file not found: {self.path}")
        try:
            adios = adios2.Adios()
            io = adios.declare_io(f"member-file-{self.member}")
            io.set_engine("BP5")
            # A file cut short must fail, not wait for a writer that will never come: with the
            # default POSIX transport, ADIOS2 2.12 waits forever for the missing bytes of a
            # truncated data file (measured), and 3600 s for a truncated metadata file.
            io.set_parameters({"OpenTimeoutSecs": "1"})
            io.add_transport("File", {"Library": "stdio"})
            self._adios = adios  # the IO lives as long as its Adios object
            self._reader = adios2.FileReader(io, str(self.path))
            variables = self._reader.available_variables()
            attributes = {name: self._reader.read_attribute(name) for name in self._reader.available_attributes()}
        except Exception as exc:
            self.close()
            raise StreamError(self.member, f"{self.path} is not a readable BP5 file: {exc}") from exc
        try:
            self.info = member_info(self.member, attributes, prefix=f"{self.path}: ", named_by="the file name")
            for name in (TIME, *self.fields):
                if name not in variables:
                    raise ContractError(self.member, f"{self.path} has no variable '{name}'")
            shapes, counts = {}, {}
            for name in self.fields:
                var = variables[name]
                if var.get("Type") != "float":
                    raise ContractError(self.member, f"{self.path}: '{name}' has type {var.get('Type')}, expected float")
                shapes[name] = tuple(int(s) for s in var.get("Shape", "").replace(",", " ").split())
                counts[name] = int(var.get("AvailableStepsCount", 0))
            first = self.fields[0]
            self.field_shape, self.n_steps = shapes[first], counts[first]
            if len(self.field_shape) != 2 or self.n_steps < 1:
                raise ContractError(
                    self.member, f"{self.path}: '{first}' has shape {list(self.field_shape)} and {self.n_steps} steps"
                )
            for name in self.fields[1:]:
                if shapes[name] != self.field_shape or counts[name] != self.n_steps:
                    raise ContractError(
                        self.member,
                        f"{self.path}: '{name}' has shape {list(shapes[name])} and {counts[name]} steps, "
                        f"'{first}' {list(self.field_shape)} and {self.n_steps}",
                    )
            self.times = np.asarray(self._read(TIME, step_start=0, step_count=self.n_steps), dtype=np.float64)
            self.times = self.times.reshape(-1)
        except Exception:
            self.close()
            raise
        return self

    def read_step(self, step: int) -> np.ndarray:
        """Every field of step ``step`` (0-based): float32 [n_fields, ny, nx]."""
        return np.stack([self._read(name, step_start=step, step_count=1).reshape(self.field_shape) for name in self.fields])

    def read_all(self) -> np.ndarray:
        """Every step of every field: float32 [n_steps, n_fields, ny, nx]."""
        shape = (self.n_steps, *self.field_shape)
        return np.stack([self._read(name, step_start=0, step_count=self.n_steps).reshape(shape) for name in self.fields], axis=1)

    def _read(self, name: str, *, step_start: int, step_count: int) -> np.ndarray:
        if self._reader is None:
            raise StreamError(self.member, f"{self.path}: read before open()")
        if not (0 <= step_start and step_start + step_count <= self.n_steps):
            raise IndexError(f"{self.path}: steps [{step_start}, {step_start + step_count}) out of range ({self.n_steps} steps)")
        try:
            if name == TIME:
                return np.asarray(self._reader.read(name, step_selection=[step_start, step_count]))
            count = list(self.field_shape)
            return np.asarray(
                self._reader.read(name, start=[0] * len(count), count=count, step_selection=[step_start, step_count]),
                dtype=np.float32,
            )
        except Exception as exc:
            raise StreamError(
                self.member, f"{self.path}: reading '{name}' steps [{step_start}, {step_start + step_count}) failed: {exc}"
            ) from exc

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:
                pass
            self._reader = None
        self._adios = None

    def __enter__(self) -> MemberFile:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # ADIOS2 objects do not survive pickling or fork: a copy sent to a worker reopens the file.
        state = dict(self.__dict__)
        state["_reader"] = state["_adios"] = None
        return state
