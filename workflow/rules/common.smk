# Plumbing shared by the rules: config validation, paths, member lists, the --cores check.

import shlex
import sys

import yaml

from datamove.config import ConfigError, StudyConfig, merge_config, validate_config
from datamove.run.heartbeat import clear_final_beat
from datamove.run.launches import watch_launches
from datamove.run.lock import StudyBusyError, refuse_if_trained
from datamove.run.signals import forward_interrupts
from datamove.evaluation.arms import arm_config, arm_dirs
from datamove.evaluation.plots import FIGURES

# The datamove CLI of the Python that runs Snakemake: no reliance on PATH or an activated venv.
DATAMOVE = f"{shlex.quote(sys.executable)} -m datamove"

# The Snakefile's configfile (config/config.yaml, the heat study) under a --configfile or --config
# that names another problem: Snakemake merges them key by key, which would hand heat's solver.nx,
# solver.ny and parameter ranges to the other solver; merge_config replaces those sections instead
# (and trainer.model_args where trainer.model changes), as a models study's problems do; and the
# default study's comparison.enabled is not handed to a --configfile's study. Not in a
# module (a comparison arm): its config is the one evaluate.smk hands it, not the command line's.
_defaults = workflow.configfiles[len(workflow.overwrite_configfiles or []):]
_over = workflow.config_settings.overwrite_config
if (_defaults and _over and not config.get("arm") and not getattr(workflow.modifier, "skip_configfile", False)
        and not getattr(workflow.config_settings, "replace_workflow_config", False)):
    _raw = {}
    for _path in _defaults:
        with open(_path) as _fh:
            _raw = merge_config(_raw, yaml.safe_load(_fh) or {})
    config.clear()
    config.update(merge_config(_raw, _over))
    # The default study compares its arms (comparison.enabled): another study, named by a
    # --configfile, does only where its own config says so (its folders and targets differ).
    if workflow.overwrite_configfiles and "enabled" not in (_over.get("comparison") or {}):
        config.get("comparison", {}).pop("enabled", None)

# One run of a study of studies (studies.smk: models, diversity, sampling and policy studies), the
# shell command of its run rule: a whole study in its own snakemake on the run's config, in this working
# directory. --nolock: the outer snakemake holds the lock of this working directory. Each attempt
# starts from an empty folder (no resume: the runs' timings are compared) and is stopped after the
# study's run limit; a run whose ledger (params.ledger) is incomplete lost members, so it is not
# comparable: it fails and is retried (the rules' retries). The targets after --cores, since
# --configfile takes several values; params.targets may be empty (the run's default targets).
# The Python, Snakefile and check are written into the command here (no global in a rule's shell).
_PYTHON = shlex.quote(sys.executable)
_CHECK = shlex.quote("import sys; from datamove.studies.sweep import require_complete; require_complete(sys.argv[1])")
NESTED_RUN = (
    "rm -rf {params.folder} && timeout --kill-after 30 {params.limit} "
    f"{_PYTHON} -m snakemake -s {shlex.quote(workflow.main_snakefile)} --directory . --configfile {{input.cfg}} "
    "--cores {params.cores} --nolock {params.targets} > {log} 2>&1 "
    f"&& {_PYTHON} -c {_CHECK} {{params.ledger}} >> {{log}} 2>&1"
)

# The runs of the nested studies (models, diversity, sampling and policy studies: each run a whole
# study in a nested snakemake) go one at a time, so that they do not share the cores: each holds the
# resource study_runs, of which there is one (--resources study_runs=N allows N at once). A resource,
# not a chain of inputs from run to run: a run's only input is its config, so that a run done again,
# or one added to a study, does not redo the others.
if "study_runs" not in workflow.global_resources:
    workflow.register_resource("study_runs", 1)

# One validator for the CLI and the workflow (it fills every default from
# ../schemas/config.schema.yaml and names the key at fault); a bad config stops here, before any job.
try:
    _validated = validate_config(config, source="workflow config")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(_validated)
STUDY = StudyConfig.from_dict(config)
# stream.engine decides the arm: SST streams to train_online, BP5 writes files for train_offline.
ONLINE = STUDY.stream.engine.upper() == "SST"
# comparison.enabled: this workflow runs both arms as modules (evaluate.smk); an arm has `arm` set.
COMPARISON = STUDY.comparison.enabled and STUDY.arm is None
MEMBER_IDS = [f"{m:06d}" for m in range(STUDY.ensemble.n_members)]
# ensemble.members_per_job > 1: simulate_members runs several members per job (simulate.smk).
JOB_IDS = [f"{j:06d}" for j in range(-(-STUDY.ensemble.n_members // STUDY.members_per_job))]


def study_path(*parts):
    """A path inside results/<study>/."""
    return str(STUDY.study_dir.joinpath(*parts))


def log_path(rule, name="{rule}"):
    """One place for logs: results/<study>/logs/<rule>/<name>.log."""
    return study_path("logs", rule, f"{name}.log")


def member_markers():
    if STUDY.members_per_job > 1:
        return expand(study_path("members", "job-{job}.json"), job=JOB_IDS)
    return expand(study_path("members", "member-{member}.json"), member=MEMBER_IDS)


def simulate_inputs(wildcards):
    """Online (SST), a solver waits for the trainer's gate; a BP5 writer needs no reader."""
    inputs = {"cfg": study_path("config.yaml")}
    if ONLINE:
        inputs["gate"] = str(STUDY.gate_path)
    return inputs


def train_inputs(wildcards):
    """The trainer's inputs; and the note of a trainer that finished with members lost
    (trainer.resume.json, newer than model.pt): the same command, rerun, then reruns the trainer,
    which resumes from its final checkpoint and trains on the members that the rerun sends. The
    note stays once written (an input that came and went would rerun a finished trainer)."""
    inputs = {"cfg": study_path("config.yaml"), "heldout": str(STUDY.heldout_dir)}
    if STUDY.resume_path.exists():
        inputs["resume"] = str(STUDY.resume_path)
    return inputs


def gate_args(wildcards, input):
    """Online, a solver waits for the trainer that opened the gate, and fails at once if it is gone."""
    return f"--wait-trainer --gate {shlex.quote(input.gate)}" if ONLINE else ""


def online_arm_metrics():
    """The online arm's metrics.csv, whose batches or seconds are the offline arm's budget."""
    return str(STUDY.results_dir / STUDY.study / "online" / "metrics.csv")


def offline_inputs(wildcards):
    inputs = {"cfg": study_path("config.yaml"), "heldout": str(STUDY.heldout_dir), "members": member_markers()}
    if STUDY.arm == "offline":
        inputs["budget"] = online_arm_metrics()
    return inputs


def offline_budget_args(wildcards):
    if STUDY.arm != "offline":
        return ""
    return f"--budget-from {online_arm_metrics()} --budget {STUDY.comparison.budget}"


def final_outputs():
    if COMPARISON:
        return comparison_outputs()  # evaluate.smk
    return [
        study_path("model.pt"),
        study_path("metrics.csv"),
        study_path("ledger.csv"),
        *member_markers(),
        *(evaluation_outputs() if STUDY.evaluation.enabled else []),  # evaluate.smk
    ]



# ---- evaluation, figures and the comparison study (evaluate.smk)

# Study-level outputs: one set per study (not per arm).
TABLE = study_path("results.csv")
SUMMARY = study_path("summary.txt")
FIGURE_DATA = study_path("figure_data.csv")


def figure_path(name):
    return study_path("figures", f"{name}.png")


def evaluation_outputs():
    """A trained model's test errors; for a study (not an arm of it), its figures and table."""
    outputs = [] if COMPARISON else [study_path("evaluation.csv"), study_path("maps.csv")]
    if not STUDY.arm:
        outputs += [TABLE, study_path("results.md"), *(figure_path(name) for name in FIGURES), SUMMARY]
    return outputs


def comparison_outputs():
    """The study's figures and table, and everything each arm's own workflow makes (the arms are
    the modules online_arm and offline_arm of evaluate.smk)."""
    return [*evaluation_outputs(), *online_arm.final_outputs(), *offline_arm.final_outputs()]


def figure_data_inputs(wildcards):
    inputs = {"cfg": study_path("config.yaml")}
    for arm, folder in arm_dirs(STUDY).items():
        for name in ("metrics.csv", "ledger.csv", "evaluation.csv", "maps.csv", "model.pt"):
            inputs[f"{arm}_{name.split('.')[0]}"] = str(folder / name)
        if arm == "offline":
            inputs["offline_seen"] = str(folder / "seen.csv")
    return inputs


onstart:
    # Run before any job (not in a dry run): a study folder that a live trainer uses belongs to
    # another run, whose outputs this one's scheduler would delete before rerunning their jobs.
    _online = StudyConfig.from_dict(arm_config(config, "online")) if COMPARISON else STUDY
    try:
        refuse_if_trained(_online)
    except StudyBusyError as exc:
        raise WorkflowError(str(exc)) from None
    # An earlier run's last beat goes: the gate reads a last beat as this run's trainer's, which
    # failed to start or stopped, and fails at once with its reason (not after gate.timeout_s).
    if ONLINE or COMPARISON:
        clear_final_beat(_online)
        # The trainer stops waiting for members that Snakemake will not launch (a job failed without
        # --keep-going, an interrupt); until then a member not started is pending, however long
        # it waits in the queue (datamove.run.launches).
        _online.launch_stop_path.unlink(missing_ok=True)
        _members = ("simulate_member", "simulate_members")
        watch_launches(workflow, [_online.launch_stop_path],
                       member_rules=[f"online_{r}" for r in _members] if COMPARISON else _members)
    # Snakemake interrupted alone (kill -INT, SIGTERM) waits for its jobs without signalling them:
    # pass it on to the trainer (it checkpoints and stops; --rerun-incomplete resumes it) and the
    # solvers. A Ctrl-C in a terminal reaches them all anyway; a second SIGTERM does no harm.
    forward_interrupts()
    # Checked here, not at parse time: a dry run or --lint needs no cores. The trainer holds one
    # core for the whole study; the solvers need at least one more or they would never run.
    cores = workflow.global_resources.get("_cores")
    cores = getattr(cores, "value", cores)
    if (ONLINE or COMPARISON) and cores is not None and cores < 2:
        raise WorkflowError(
            f"--cores {cores} is too small: the online trainer runs for the whole study and holds "
            "one core, and at least one more is needed for the solvers. Use --cores 2 or more."
        )
