"""Configuring ADIOS2 IO objects from the study's stream settings."""

from __future__ import annotations

import adios2

from datamove.config import StreamConfig

IO_NAME = "datamove"


def make_io(stream: StreamConfig, name: str = IO_NAME) -> tuple[adios2.Adios, adios2.IO]:
    """An Adios object and a configured IO.

    With ``stream.xml_config``, the XML file's ``<io name="datamove">`` decides engine and
    parameters (the same file configures a C++ or Fortran solver); otherwise the config does.
    The IO is configured before any Stream is opened (``Stream.set_parameters`` is broken in 2.12).
    """
    if stream.xml_config:
        adios = adios2.Adios(str(stream.xml_config))
        io = adios.declare_io(name)
        return adios, io
    adios = adios2.Adios()
    io = adios.declare_io(name)
    io.set_engine(stream.engine)
    if stream.engine.upper() == "SST":
        io.set_parameters({str(k): str(v) for k, v in stream.parameters.items()})
    return adios, io
