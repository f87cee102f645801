# DATAMOVE: an ensemble of solver runs streamed (ADIOS2 SST) into an online trainer.
# Thin entry point: rules live in workflow/rules/, defaults and docs in workflow/schemas/.

from datamove.run.files import owner_only

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/offline.smk"
include: "workflow/rules/evaluate.smk"

# Closed by default (docs/security.md): every job inherits the umask 077; a study folder from an
# earlier run becomes its owner's only.
owner_only(STUDY.results_dir / STUDY.study, STUDY.data_dir / STUDY.study)


rule all:
    default_target: True
    input:
        final_outputs(),
