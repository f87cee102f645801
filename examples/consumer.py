"""Reading a DATAMOVE member stream from outside DATAMOVE: plain ADIOS2 + numpy.

    python examples/consumer.py --stream results/<study>/streams/member-000000 [--engine SST]

Prints the attributes, then one line per step (time, field shape, mean), and exits non-zero if the
stream ended on an error rather than on end-of-stream.
"""

import argparse
import sys

import adios2
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stream", required=True, help="path without .sst (SST) or the .bp folder (BP5)")
    ap.add_argument("--engine", default="SST")
    args = ap.parse_args()
    adios = adios2.Adios()
    io = adios.declare_io("consumer")
    io.set_engine(args.engine)
    steps = 0
    with adios2.Stream(io, args.stream, "r") as stream:
        for _ in stream.steps():
            if steps == 0:
                for name in sorted(stream.available_attributes()):
                    print(f"attribute {name} = {stream.read_attribute(name)}")
            t = float(np.asarray(stream.read("time")).reshape(-1)[0])
            u = stream.read("u")
            print(f"step {steps + 1} time {t:.4f} u {u.dtype} {list(u.shape)} mean {u.mean():.4f}")
            steps += 1
        status = stream.step_status()
    # The steps() loop also ends on a timeout or an error: tell them apart from end-of-stream.
    if status != adios2.bindings.StepStatus.EndOfStream:
        print(f"stream ended with status {status}", file=sys.stderr)
        return 1
    print(f"{steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
