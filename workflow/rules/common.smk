# Plumbing shared by the rules: config validation, paths, member lists, the --cores check.

import shlex
import sys

from datamove.config import ConfigError, StudyConfig, validate_config

# The datamove CLI of the Python that runs Snakemake: no reliance on PATH or an activated venv.
DATAMOVE = f"{shlex.quote(sys.executable)} -m datamove"

# One validator for the CLI and the workflow (it fills every default from
# ../schemas/config.schema.yaml and names the key at fault); a bad config stops here, before any job.
try:
    _validated = validate_config(config, source="workflow config")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(_validated)
STUDY = StudyConfig.from_dict(config)
if STUDY.stream.engine.upper() != "SST":
    raise WorkflowError(
        f"stream.engine: {STUDY.stream.engine} is not supported by the workflow yet: this release "
        "trains online from SST streams (the offline BP5 trainer is future work)"
    )
MEMBER_IDS = [f"{m:06d}" for m in range(STUDY.ensemble.n_members)]


def study_path(*parts):
    """A path inside results/<study>/."""
    return str(STUDY.study_dir.joinpath(*parts))


def log_path(rule, name="{rule}"):
    """One place for logs: results/<study>/logs/<rule>/<name>.log."""
    return study_path("logs", rule, f"{name}.log")


def member_markers():
    return expand(study_path("members", "member-{member}.json"), member=MEMBER_IDS)


def final_outputs():
    return [
        study_path("model.pt"),
        study_path("metrics.csv"),
        study_path("ledger.csv"),
        *member_markers(),
    ]


onstart:
    # Checked here, not at parse time: a dry run or --lint needs no cores. The trainer holds one
    # core for the whole study; the solvers need at least one more or they would never run.
    cores = workflow.global_resources.get("_cores")
    cores = getattr(cores, "value", cores)
    if cores is not None and cores < 2:
        raise WorkflowError(
            f"--cores {cores} is too small: the online trainer runs for the whole study and holds "
            "one core, and at least one more is needed for the solvers. Use --cores 2 or more."
        )
