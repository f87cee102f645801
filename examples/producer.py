"""A solver written outside DATAMOVE that feeds the trainer: plain ADIOS2 + numpy, no datamove import.

It follows the stream contract (docs/stream-contract.md): one stream per member, attributes before
the first step (member int64, params float64[n], param_names as ONE comma-separated string, solver),
then per step a float64 ``time`` and float32 fields of shape [ny, nx]. Any code in C, C++, Fortran or
Python that writes the same would do. Two ways to call it:

Launcher mode, the form of a config's ``solver.command`` (the launcher fills in the ``{...}``):

    python examples/producer.py --out {stream} --id {member} --engine {engine} --params {params}
        --steps {n_steps} --param-names {param_names} --solver {solver} --fields u,v --nx 16 --ny 12

  It writes ``{stream}.bp`` with BP5 and opens ``{stream}`` with SST (ADIOS2 adds ``{stream}.sst``).
  ``--params`` takes any number of values (``0.25,3.5``); ``--param-names`` defaults to
  ``p0,p1,...``, ``--solver`` to ``my-solver``, ``--fields`` to ``u``, ``--nx/--ny`` to 16/12, the
  time step ``--dt`` to 1/steps (time runs over (0, 1]). The toy "solver" is a smooth, deterministic
  function of the params and t, different per field (index f) - learnable by a surrogate:

      field_f(x, y, t) = f + sum_i p_i sin(pi (i+1) x) cos(pi (f+1) y) exp(-(i+1) t)

  on the cell centres x = (ix + 0.5) / nx, y = (iy + 0.5) / ny.

Stream-folder mode (the heat study's names): writes DIR/member-{id:06d} (SST) or .bp (BP5), with the
params of a heat member, solver ``heat`` and a field ``u`` that relaxes towards the wall temperature:

    python examples/producer.py --stream-dir results/<study>/streams --member 0 --nx 16 --ny 12 --steps 20

``--break`` writes a stream that violates the contract (used by the tests): no-params, shape (one row
too many), shape-later (from step 3), nan (at step 3), dtype (float64), missing-field (the last field
is missing from step 2 on), exit (closes the stream after 2 steps, then exits with status 3).

SST's Open waits for the trainer with no timeout: ``--open-timeout S`` (default 0 = forever) ends the
process with SIGALRM (status 142 in a shell, -14 from subprocess) if no reader has connected by then.
"""

import argparse
import os
import signal
import sys

import adios2
import numpy as np

HEAT_PARAM_NAMES = ["t_init", "t_x0", "t_xl", "t_y0", "t_yl"]
BREAKAGES = ["none", "no-params", "shape", "shape-later", "nan", "dtype", "missing-field", "exit"]


def toy(params, f, ny, nx, t):
    """The launcher mode's field number f at time t: see the module docstring."""
    x = (np.arange(nx) + 0.5) / nx
    y = (np.arange(ny)[:, None] + 0.5) / ny
    u = np.full((ny, nx), float(f))
    for i, p in enumerate(params):
        u += p * np.sin(np.pi * (i + 1) * x) * np.cos(np.pi * (f + 1) * y) * np.exp(-(i + 1) * t)
    return u


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="launcher mode: the stream path without suffix")
    ap.add_argument("--stream-dir", help="stream-folder mode: writes DIR/member-{id:06d}[.bp]")
    ap.add_argument("--member", "--id", dest="member", type=int, required=True)
    ap.add_argument("--engine", default="SST", choices=["SST", "BP5"])
    ap.add_argument("--params", help="launcher mode: the member's parameters, comma-separated")
    ap.add_argument("--param-names", help="comma-separated (default p0,p1,...; heat's in stream-folder mode)")
    ap.add_argument("--solver", help="the `solver` attribute (default my-solver; heat in stream-folder mode)")
    ap.add_argument("--fields", default="u", help="launcher mode: field names, comma-separated")
    ap.add_argument("--nx", type=int, default=16)
    ap.add_argument("--ny", type=int, default=12)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--dt", type=float, help="time step (default 1/steps; 0.01 in stream-folder mode)")
    ap.add_argument("--open-timeout", type=float, default=0.0, help="seconds SST's Open may wait (0 = forever)")
    ap.add_argument("--break", dest="breakage", choices=BREAKAGES, default="none")
    args = ap.parse_args()
    if (args.out is None) == (args.stream_dir is None):
        ap.error("give exactly one of --out (launcher mode) and --stream-dir")

    if args.out is not None:  # launcher mode: the toy field above, for any params
        if not args.params:
            ap.error("--out needs --params")
        path = args.out + (".bp" if args.engine == "BP5" else "")
        params = np.array([float(v) for v in args.params.split(",")])
        names = args.param_names.split(",") if args.param_names else [f"p{i}" for i in range(len(params))]
        solver, fields, dt = args.solver or "my-solver", args.fields.split(","), args.dt or 1.0 / args.steps

        def values(f, k):  # field number f at step k
            return toy(params, f, args.ny, args.nx, k * dt)
    elif args.params:
        ap.error("--params needs --out (stream-folder mode writes a heat member's params)")
    else:  # stream-folder mode: a heat member relaxing towards the walls' mean temperature
        path = os.path.join(args.stream_dir, f"member-{args.member:06d}" + (".bp" if args.engine == "BP5" else ""))
        # An initial temperature away from the walls' mean, so the field evolves.
        params = np.array([450.0, 100.0, 500.0, 200.0, 400.0]) + args.member
        names = args.param_names.split(",") if args.param_names else HEAT_PARAM_NAMES
        solver, fields, dt = args.solver or "heat", ["u"], args.dt or 0.01
        target = params[1:].mean()

        def values(f, k):  # u_k = u_(k-1) + 0.1 (target - u_(k-1)), u_0 = t_init
            return np.full((args.ny, args.nx), target + (params[0] - target) * 0.9**k)
    if len(names) != len(params):
        ap.error(f"{len(names)} param names for {len(params)} params")

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # SST writers crash later if it is missing
    adios = adios2.Adios()
    io = adios.declare_io("producer")
    io.set_engine(args.engine)
    if args.engine == "SST":
        # Lossless: wait for one reader, block when the queue is full.
        io.set_parameters({"RendezvousReaderCount": "1", "QueueLimit": "4", "QueueFullPolicy": "Block",
                           "DataTransport": "WAN"})
        signal.setitimer(signal.ITIMER_REAL, args.open_timeout)  # SIGALRM ends the process (0: no alarm)
    with adios2.Stream(io, path, "w") as stream:
        signal.setitimer(signal.ITIMER_REAL, 0)  # Open has returned: a reader is there
        stream.write_attribute("member", np.int64(args.member))
        if args.breakage != "no-params":
            stream.write_attribute("params", params)
        stream.write_attribute("param_names", ",".join(names))
        stream.write_attribute("solver", solver)
        for key, value in {"nx": np.int64(args.nx), "ny": np.int64(args.ny), "dt": np.float64(dt)}.items():
            stream.write_attribute(key, value)  # the solver's constants: kept, not checked
        for k in range(1, args.steps + 1):
            stream.begin_step()
            stream.write("time", np.float64(k * dt))
            for f, name in enumerate(fields):
                if args.breakage == "missing-field" and k >= 2 and f == len(fields) - 1:
                    continue
                field = values(f, k).astype(np.float64 if args.breakage == "dtype" else np.float32)
                if args.breakage == "shape" or (args.breakage == "shape-later" and k >= 3):
                    field = np.vstack([field, field[:1]])  # one row more
                if args.breakage == "nan" and k == 3:
                    field[0, 0] = np.nan
                stream.write(name, field, list(field.shape), [0, 0], list(field.shape))
            stream.end_step()
            if args.breakage == "exit" and k == 2:
                break  # a solver that gives up: the stream ends short, the exit status says why
    if args.breakage == "exit":
        sys.exit(3)


if __name__ == "__main__":
    main()
