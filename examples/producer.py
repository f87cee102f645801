"""A solver written outside DATAMOVE that feeds the trainer: plain ADIOS2 + numpy, no datamove import.

It follows the stream contract (docs/stream-contract.md): one stream per member named
``member-{id:06d}`` in the study's stream folder, attributes before the first step, then per step a
float32 field ``u`` [ny, nx] and a float64 ``time``. The toy "solver" relaxes a field towards the wall
temperature; any code in C, C++, Fortran or Python that writes the same would do.

    python examples/producer.py --stream-dir results/<study>/streams --member 0 --nx 16 --ny 12 --steps 20

``--break`` writes a stream that violates the contract (used by the tests).
"""

import argparse
import os

import adios2
import numpy as np

PARAM_NAMES = ["t_init", "t_x0", "t_xl", "t_y0", "t_yl"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stream-dir", required=True)
    ap.add_argument("--member", type=int, required=True)
    ap.add_argument("--nx", type=int, required=True)
    ap.add_argument("--ny", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--dt", type=float, default=0.01)
    ap.add_argument("--engine", default="SST")
    ap.add_argument("--break", dest="breakage", choices=["none", "no-params", "shape", "shape-later", "nan", "dtype"], default="none")
    args = ap.parse_args()

    os.makedirs(args.stream_dir, exist_ok=True)  # SST writers crash later if the folder is missing
    adios = adios2.Adios()
    io = adios.declare_io("producer")
    io.set_engine(args.engine)
    if args.engine == "SST":
        # Lossless: wait for one reader, block when the queue is full.
        io.set_parameters({"RendezvousReaderCount": "1", "QueueLimit": "4", "QueueFullPolicy": "Block"})
    name = f"member-{args.member:06d}" + (".bp" if args.engine == "BP5" else "")
    # An initial temperature away from the walls' mean, so the field evolves.
    params = np.array([450.0, 100.0, 500.0, 200.0, 400.0]) + args.member
    with adios2.Stream(io, os.path.join(args.stream_dir, name), "w") as stream:
        stream.write_attribute("member", np.int64(args.member))
        if args.breakage != "no-params":
            stream.write_attribute("params", params)
        stream.write_attribute("param_names", ",".join(PARAM_NAMES))
        stream.write_attribute("solver", "heat")
        ny, nx = (args.ny + 1, args.nx) if args.breakage == "shape" else (args.ny, args.nx)
        u = np.full((ny, nx), params[0])
        target = params[1:].mean()
        for k in range(1, args.steps + 1):
            u = u + 0.1 * (target - u)
            field = u.astype(np.float64 if args.breakage == "dtype" else np.float32)
            if args.breakage == "nan" and k == 3:
                field[0, 0] = np.nan
            if args.breakage == "shape-later" and k == 3:
                field = np.vstack([field, field[:1]])  # one row more from step 3 on
            stream.begin_step()
            stream.write("time", np.float64(k * args.dt))
            stream.write("u", field, list(field.shape), [0, 0], list(field.shape))
            stream.end_step()


if __name__ == "__main__":
    main()
