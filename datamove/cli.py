"""The ``datamove`` command line: each workflow rule is one of these sub-commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from datamove.config import ConfigError, StudyConfig


def _config(args) -> StudyConfig:
    return StudyConfig.load(args.config)


def cmd_simulate(args) -> int:
    from datamove.simulate import simulate

    simulate(_config(args), args.member, marker=Path(args.marker) if args.marker else None)
    return 0


def cmd_train(args) -> int:
    from datamove.training.online import train_online

    import torch

    cfg = _config(args)
    if args.threads:
        # A small model on a few shared cores: more threads than cores given only contend.
        torch.set_num_threads(args.threads)
    if cfg.stream.engine.upper() != "SST":
        raise ConfigError(
            f"`datamove train` trains online from SST streams; stream.engine is {cfg.stream.engine}"
        )
    train_online(cfg)
    return 0


def cmd_make_heldout(args) -> int:
    from datamove.simulate import make_heldout

    make_heldout(_config(args))
    return 0


def cmd_wait_trainer(args) -> int:
    """The readiness gate: wait for a fresh trainer heartbeat."""
    cfg = _config(args)
    path = cfg.heartbeat_path
    fresh = max(3 * cfg.trainer.heartbeat_s, 2.0)
    deadline = time.monotonic() + args.timeout
    print(f"[gate] waiting for the trainer's heartbeat {path} (up to {args.timeout:g} s)", file=sys.stderr)
    while time.monotonic() < deadline:
        try:
            beat = json.loads(path.read_text())
            if time.time() - float(beat["time"]) < fresh:
                print(f"[gate] trainer ready (pid {beat['pid']})", file=sys.stderr)
                if args.touch:
                    Path(args.touch).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.touch).write_text(json.dumps(beat))
                return 0
        except (FileNotFoundError, ValueError, KeyError):
            pass  # not written yet, or caught mid-replace
        time.sleep(0.2)
    print(
        f"[gate] error: the trainer did not report ready within {args.timeout:g} s (no fresh {path}); "
        f"see the train_online log",
        file=sys.stderr,
    )
    return 1


def cmd_check_config(args) -> int:
    import yaml

    cfg = _config(args)
    yaml.safe_dump(dict(cfg.raw), sys.stdout, sort_keys=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datamove", description="Online training of deep surrogates from simulation ensembles."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", required=True, help="study config (YAML, validated against the schema)")
        p.set_defaults(func=func)
        return p

    p = add("simulate", cmd_simulate, "Run one ensemble member and stream its steps (SST or BP5).")
    p.add_argument("--member", type=int, required=True, help="member id, 0 <= K < ensemble.n_members")
    p.add_argument("--marker", help="write a JSON summary here on success (workflow output)")
    p = add("train", cmd_train, "Train the surrogate online from the member streams (SST).")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add("make-heldout", cmd_make_heldout, "Write the held-out validation members (BP5 files).")
    p = add("wait-trainer", cmd_wait_trainer, "Wait until the trainer reports ready (readiness gate).")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    p.add_argument("--touch", help="file to write once the trainer is ready (workflow output)")
    add("check-config", cmd_check_config, "Validate a config and print it with every default filled in.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"datamove: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
