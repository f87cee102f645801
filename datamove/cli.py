"""The ``datamove`` command line: each workflow rule is one of these sub-commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from datamove.config import ConfigError, StudyConfig
from datamove.run.files import owner_only
from datamove.run.signals import Interrupted


def _config(args) -> StudyConfig:
    return StudyConfig.load(args.config)


def cmd_simulate(args) -> int:
    from datamove.ensemble.members import job_members, simulate, simulate_job
    from datamove.run.gate import wait_for_trainer
    from datamove.run.heartbeat import TrainerLostError
    from datamove.run.receipts import held, read_receipt

    cfg = _config(args)
    members = [args.member] if args.job is None else job_members(cfg, args.job)
    label = f"member {args.member}" if args.job is None else f"job {args.job}"
    trainer_pid = None
    if args.wait_trainer and cfg.stream.engine.upper() == "SST":  # nobody reads BP5 files live
        # The workflow's gate names the trainer that opened it: once that one is gone (stopped,
        # finished, silent), this member fails at once instead of waiting out the open timeout.
        expected = None
        if args.gate:
            try:
                expected = int(json.loads(Path(args.gate).read_text())["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                expected = None  # no gate file (a manual run): wait for whichever trainer comes
        try:
            beat = wait_for_trainer(cfg, cfg.stream.open_timeout_s, expected_pid=expected)
        except TrainerLostError:
            # A rerun of a member (or of a job, all of its members) whose steps the trainer held
            # (its solver died after its last step, before its marker) and that then finished:
            # nothing is lost, nothing to send.
            if expected is None or not all(held(read_receipt(cfg, member)) for member in members):
                raise
            beat = {"pid": expected}
        if beat is None:
            print(
                f"datamove: {label}: no live trainer (its heartbeat {cfg.heartbeat_path} did not "
                f"advance within {cfg.stream.open_timeout_s:g} s, stream.open_timeout_s)",
                file=sys.stderr,
            )
            return 1
        trainer_pid = beat["pid"]
    marker = Path(args.marker) if args.marker else None
    if args.job is not None:
        simulate_job(cfg, args.job, marker=marker, trainer_pid=trainer_pid)
    else:
        simulate(cfg, args.member, marker=marker, trainer_pid=trainer_pid)
    return 0


def _as_ranks(cfg, args, command: str, extra: Sequence[str] = ()) -> int | None:
    """Data-parallel training (trainer.world_size > 1): run ``datamove <command>`` again as that many
    ranks under torchrun and return its exit code; None in a rank, or without data parallelism."""
    if cfg.trainer.world_size <= 1 or "RANK" in os.environ:
        return None
    from datamove.training.distributed import relaunch_under_torchrun

    argv = [command, "--config", str(args.config), *(["--threads", str(args.threads)] if args.threads else []), *extra]
    return relaunch_under_torchrun(cfg.trainer.world_size, argv)


def cmd_train(args) -> int:
    from datamove.run.lock import StudyBusyError
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
    if (code := _as_ranks(cfg, args, "train")) is not None:
        return code
    try:
        train_online(cfg)
    except StudyBusyError as exc:
        print(f"datamove: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_train_offline(args) -> int:
    import torch

    from datamove.training.offline import online_budget, train_offline

    cfg = _config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cfg.stream.engine.upper() != "BP5":
        raise ConfigError(
            f"`datamove train-offline` trains on member files written with BP5; stream.engine is {cfg.stream.engine}"
        )
    budget_args = ["--budget-from", str(args.budget_from), "--budget", args.budget] if args.budget_from else []
    if (code := _as_ranks(cfg, args, "train-offline", budget_args)) is not None:
        return code
    budget = {}
    if args.budget_from:
        value = online_budget(args.budget_from, args.budget)
        budget = {"budget_batches": int(value)} if args.budget == "batches" else {"budget_seconds": float(value)}
    train_offline(cfg, **budget)
    return 0


def cmd_make_testset(args) -> int:
    from datamove.ensemble.members import make_testset

    make_testset(_config(args))
    return 0


def cmd_evaluate(args) -> int:
    from datamove.evaluation.arms import arm_name
    from datamove.evaluation.errors import evaluate_members, pooled
    from datamove.training.step import load_surrogate

    cfg = _config(args)
    model, _ = load_surrogate(args.model)
    errors, maps = evaluate_members(model, cfg, arm=arm_name(cfg))
    errors.to_csv(args.out, index=False)
    if args.maps:
        maps.to_csv(args.maps, index=False)
    overall = pooled(errors).iloc[0]
    print(
        f"[evaluate] {args.model}: {cfg.test.n_members} test members, MSE {overall['mse']:.4e} (normalised), "
        f"relative L2 {overall['rel_l2']:.4e}; wrote {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_figure_data(args) -> int:
    from datamove.evaluation.report import collect_figure_data

    data = collect_figure_data(_config(args))
    data.to_csv(args.out, index=False)
    print(f"[figure-data] {len(data)} rows -> {args.out}", file=sys.stderr)
    return 0


def cmd_plot(args) -> int:
    from datamove.evaluation.plots import plot

    plot(args.figure, args.data, args.out)
    return 0


def cmd_results_table(args) -> int:
    import pandas as pd

    from datamove.evaluation.report import write_table

    text = write_table(pd.read_csv(args.data), args.out, args.markdown)
    print(f"\nResults ({args.data}):\n\n{text}\n", flush=True)
    return 0


def cmd_study_table(args) -> int:
    from datamove.studies import KINDS
    from datamove.studies.tables import read_parts, write_table

    if args.kind not in KINDS:
        raise ValueError(f"no study kind {args.kind!r} (one of {', '.join(KINDS)})")
    kind = KINDS[args.kind]
    frames = read_parts(kind, args.parts)
    text = write_table(kind, frames, args.out, resamples=args.bootstrap)  # a kind without a bootstrap ignores it
    runs = len(frames["summary"][list(kind.key)].drop_duplicates())  # a models run has a row per arm
    print(f"[{args.command}] {runs} runs from {len(args.parts)} part(s) -> {args.out}\n\n{text}", flush=True)
    return 0


def cmd_make_heldout(args) -> int:
    from datamove.ensemble.members import make_heldout

    cfg = _config(args)
    try:
        make_heldout(cfg)
    except Exception as exc:
        # The online trainer needs these members: it cannot start, and its gate, which waits for
        # its first beat, learns why from a last one (datamove.run.gate.wait_for_trainer).
        from datamove.training.online import Heartbeat

        for path in _waiting_trainers(cfg):
            path.parent.mkdir(parents=True, exist_ok=True)
            Heartbeat(path, cfg.trainer.heartbeat_s).stop(
                finished=False, reason=f"cannot start: its held-out members could not be made ({exc})")
        raise
    return 0


def _waiting_trainers(cfg) -> list[Path]:
    """The heartbeat files of the online trainers that train on ``cfg``'s held-out members: the
    study's own (SST), or its online arm's in a comparison study."""
    if cfg.comparison.enabled and cfg.arm is None:
        from datamove.evaluation.arms import arm_config

        return [StudyConfig.from_dict(arm_config(cfg.raw, "online")).heartbeat_path]
    return [cfg.heartbeat_path] if cfg.stream.engine.upper() == "SST" else []


def cmd_wait_trainer(args) -> int:
    """The readiness gate: wait for a fresh trainer heartbeat."""
    from datamove.run.gate import wait_for_trainer
    from datamove.run.heartbeat import TrainerLostError

    cfg = _config(args)
    timeout, source = (cfg.gate.timeout_s, "gate.timeout_s") if args.timeout is None else (args.timeout, "--timeout")
    print(f"[gate] waiting for the trainer's heartbeat {cfg.heartbeat_path} (up to {timeout:g} s)", file=sys.stderr)
    try:
        beat = wait_for_trainer(cfg, timeout, this_run=args.this_run)
    except TrainerLostError as exc:
        print(f"[gate] error: {exc}; see the train_online and make_heldout logs", file=sys.stderr)
        return 1
    if beat is None:
        print(
            f"[gate] error: the trainer did not report ready within {timeout:g} s ({source}; its "
            f"heartbeat {cfg.heartbeat_path} did not advance); see the train_online log",
            file=sys.stderr,
        )
        return 1
    print(f"[gate] trainer ready (pid {beat['pid']})", file=sys.stderr)
    if args.touch:
        Path(args.touch).parent.mkdir(parents=True, exist_ok=True)
        Path(args.touch).write_text(json.dumps(beat))
    return 0


def cmd_restart(args) -> int:
    from datamove.run.restart import restart

    restart(_config(args))
    return 0


def cmd_check_config(args) -> int:
    import yaml

    cfg = _config(args)
    yaml.safe_dump(dict(cfg.raw), sys.stdout, sort_keys=False)
    sys.stdout.flush()  # a closed pipe fails here, inside main's handler, not at exit
    return 0


def cmd_list(args) -> int:
    """Every name trainer.model (models), solver.name (problems) or reservoir.policy (policies) takes
    by name, with where it comes from; a model's arguments with their defaults."""
    import inspect

    if args.what == "models":
        from datamove.models import model_arguments, model_names

        for name, origin in model_names().items():
            try:
                takes, anything = model_arguments(name)
            except ValueError as exc:  # a plug-in that does not load: listed, with why
                print(f"{name:<12} {origin}: {exc}")
                continue
            shown = [k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in takes.items()]
            print(f"{name:<12} {origin}: model_args {', '.join(shown) or 'none'}" + (", **kwargs" if anything else ""))
        print("\nAlso: an import path package.module:ClassName of a model class, or grid:package.module:ClassName "
              "of any grid network (docs/models.md, \"Your own model\").")
    elif args.what == "problems":
        from datamove.problems import problem_class, problem_names

        for name, origin in problem_names().items():
            try:
                cls = problem_class(name).obj
            except ValueError as exc:  # a plug-in that does not load: listed, with why
                print(f"{name:<20} {origin}: {exc}")
                continue
            ranges = f"; parameters {', '.join(cls.RANGES)}" if cls.RANGES else ""
            print(f"{name:<20} {origin}: {cls.__module__}.{cls.__name__}{ranges}")
        print("\nAlso: an import path package.module:ClassName of a Problem subclass, or solver.command "
              "(your own solver program; README, \"Bring your own solver\").")
    else:
        from datamove.reservoir import policy_class, policy_names

        for name, origin in policy_names().items():
            try:
                cls = policy_class(name).obj
            except ValueError as exc:
                print(f"{name:<10} {origin}: {exc}")
                continue
            print(f"{name:<10} {origin}: {cls.__module__}.{cls.__name__}")
        print("\nAlso: an import path package.module:ClassName of a datamove.reservoir.Buffer subclass.")
    return 0


def cmd_summary(args) -> int:
    from datamove.evaluation.summary import report_command, study_summary

    path = Path(args.study) / "config.yaml"
    if not path.exists():
        raise ValueError(f"no {path}: {args.study} is not a study's folder (<results_dir>/<study>/)")
    cfg = StudyConfig.load(path)
    text = study_summary(cfg, report=report_command(cfg, args.configfile))
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"\n{text}\n", flush=True)
    return 0


def cmd_status(args) -> int:
    """Where a study stands, from its folder alone; ``--watch`` refreshes until the study ends."""
    import time

    from datamove.run.status import FINISHED, BeatClock, format_status, read_status, study_folders

    folders = study_folders(args.study)
    # Watching, the heartbeat is timed by this process's clock across looks; one look has only
    # the file's time stamp.
    clocks = {folder: BeatClock() if args.watch is not None else None for folder in folders}
    while True:
        statuses = [read_status(folder, clock=clocks[folder]) for folder in folders]
        if args.json:
            out = [st.to_dict() for st in statuses]
            text = json.dumps(out[0] if len(out) == 1 else out)
        else:
            text = "\n\n".join(format_status(st) for st in statuses)
        if args.watch is not None and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")  # a refreshing screen, like watch(1)
        print(text, flush=True)
        # --watch ends with the study: 0 once finished, 1 if its trainer stopped or is gone.
        if args.watch is None:
            return 0
        if all(st.settled for st in statuses):
            return 0 if all(st.state == FINISHED for st in statuses) else 1
        time.sleep(args.watch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datamove", description="Online training of deep surrogates from simulation ensembles."
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", required=True, help="study config (YAML, validated against the schema)")
        p.set_defaults(func=func)
        return p

    p = add("simulate", cmd_simulate, "Run one ensemble member (the built-in solver or solver.command) and stream its steps (SST or BP5).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--member", type=int, help="member id, 0 <= K < ensemble.n_members")
    which.add_argument(
        "--job", type=int, help="job id J: members J*k .. J*k+k-1 one after another (k = ensemble.members_per_job)"
    )
    p.add_argument("--marker", help="write a JSON summary here on success (workflow output)")
    p.add_argument(
        "--wait-trainer", action="store_true", help="wait for a live trainer's heartbeat before streaming"
    )
    p.add_argument(
        "--gate", help="the workflow's gate file (the beat of the trainer that opened it): fail at once if that trainer is gone"
    )
    p = add("train", cmd_train, "Train the surrogate online from the member streams (SST).")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add("make-heldout", cmd_make_heldout, "Write the held-out validation members (BP5 files).")
    p = add("train-offline", cmd_train_offline, "Train the surrogate for epochs over member files (BP5).")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--budget-from", help="the online arm's metrics.csv: train as many batches or seconds as it did")
    p.add_argument("--budget", choices=["batches", "seconds"], default="batches", help="what --budget-from matches")
    add("make-testset", cmd_make_testset, "Write the test members (own seed; BP5 files).")
    p = add("evaluate", cmd_evaluate, "Evaluate a trained model on the test members (MSE, relative L2, maps).")
    p.add_argument("--model", required=True, help="model.pt written by a trainer")
    p.add_argument("--out", required=True, help="per-sample errors (CSV)")
    p.add_argument("--maps", help="truth, prediction and error maps of evaluation.map_member (CSV)")
    p = add("figure-data", cmd_figure_data, "Collect every number of the study's figures into one tidy CSV.")
    p.add_argument("--out", required=True, help="figure_data.csv")
    p = sub.add_parser("plot", help="Draw one figure from figure_data.csv.", description="Draw one figure from figure_data.csv.")
    p.add_argument("--figure", required=True, help="figure name (datamove.evaluation.plots.FIGURES)")
    p.add_argument("--data", required=True, help="figure_data.csv")
    p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser(
        "results-table", help="Print and save the results table.", description="Print and save the results table."
    )
    p.add_argument("--data", required=True, help="figure_data.csv")
    p.add_argument("--out", required=True, help="results.csv")
    p.add_argument("--markdown", help="also write the table as Markdown here")
    p.set_defaults(func=cmd_results_table)
    help_ = (
        "One table of a study of studies run in parts (<section>.only, other folders or machines): reads "
        "each part's CSV files and writes every file of the kind's target (compare_models, diversity, "
        "compare_sampling, compare_policies, compare_rollouts) from them."
    )
    p = sub.add_parser("study-table", help=help_, description=help_)
    p.add_argument("kind", help="the kind of study: models, diversity, sampling, policies or rollouts (datamove.studies.KINDS)")
    p.add_argument("parts", nargs="+", help="folders holding a part's CSV files (its target's folder, or a copy of them)")
    p.add_argument("--out", required=True, help="folder for the table's files")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="models, diversity and rollouts: resamples of the test members for the 95 %% intervals (<section>.bootstrap)")
    p.set_defaults(func=cmd_study_table)
    help_ = "The data-diversity table from a study run in parts: `study-table diversity`."
    p = sub.add_parser("diversity-table", help=help_, description=help_)
    p.add_argument("parts", nargs="+", help="folders holding a part's diversity.csv and diversity_members.csv")
    p.add_argument("--out", required=True, help="folder for diversity.csv, diversity_members.csv, .md and .png")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="resamples of the test members for the 95 %% intervals (diversity_study.bootstrap)")
    p.set_defaults(func=cmd_study_table, kind="diversity")
    p = add("wait-trainer", cmd_wait_trainer, "Wait until the trainer reports ready (readiness gate).")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: the config's gate.timeout_s)")
    p.add_argument("--touch", help="file to write once the trainer is ready (workflow output)")
    p.add_argument("--this-run", action="store_true",
                   help="the workflow's gate: the workflow removed an earlier run's last beat when it started, so a "
                        "last beat is this run's trainer's; one that says stopped (it could not start) fails at once")
    add("restart", cmd_restart,
        "Start the study's online trainer afresh on the next run (a checkpoint that cannot be read): sets its "
        "checkpoints aside, removes its outputs and the members' markers so that every member is sent again; "
        "keeps the config, the held-out and test members and the logs.")
    add("check-config", cmd_check_config, "Validate a config and print it with every default filled in.")
    help_ = (
        "Where a study stands (members, samples, reservoir, losses, the trainer's heartbeat, time left), "
        "read from its folder alone: works from any node that sees it, on a running, finished or crashed study."
    )
    p = sub.add_parser("status", help=help_, description=help_)
    p.add_argument("study", help="the study's folder: <results_dir>/<study>/ (results/default/, ...)")
    p.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until the study ends; exit 0 if it finished, 1 if not",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per look (a list for a comparison study's arms)")
    p.set_defaults(func=cmd_status)
    help_ = "List the models (trainer.model), problems (solver.name) or reservoir policies (reservoir.policy) a config can name."
    p = sub.add_parser("list", help=help_, description=help_)
    p.add_argument("what", nargs="?", choices=["models", "problems", "policies"], default="models")
    p.set_defaults(func=cmd_list)
    help_ = "Print an evaluated study's summary again: each arm's members and test error, what is on disk, where the figures are."
    p = sub.add_parser("summary", help=help_, description=help_)
    p.add_argument("study", help="the study's folder: <results_dir>/<study>/ (results/default/, ...)")
    p.add_argument("--out", help="also write it to this file (the workflow's <study>/summary.txt)")
    p.add_argument("--configfile", action="append", default=[],
                   help="a config file the study was run with (repeatable): named in the report's command")
    p.set_defaults(func=cmd_summary)
    return parser


def _exit_code(exc: BaseException) -> int:
    """2 for a bad config, 3 for a stored member that does not fit it, 1 for anything else."""
    if isinstance(exc, ConfigError):
        return 2
    from datamove.data import DatasetError

    return 3 if isinstance(exc, DatasetError) else 1


def main(argv: list[str] | None = None) -> int:
    """Every error ends in one ``datamove: ...`` line naming the key, file or member at fault;
    ``--debug`` shows the traceback as well."""
    owner_only()  # what every command writes is its owner's only (docs/security.md)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # `datamove check-config ... | head`: the reader left; nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("datamove: interrupted", file=sys.stderr)
        return 130
    except Interrupted as exc:
        # The trainer stopped on SIGINT/SIGTERM and said what it saved; the shell's code for that signal.
        print(f"datamove: {args.command} {exc}", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, (ValueError, RuntimeError, OSError)):  # not one of ours: say what it is
            message = f"{type(exc).__name__}: {message}" + ("" if args.debug else " (--debug shows where)")
        print(f"datamove: {message}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
