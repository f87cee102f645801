# DATAMOVE: an ensemble of solver runs streamed (ADIOS2 SST) into an online trainer.
# Thin entry point: rules live in workflow/rules/, defaults and docs in workflow/schemas/.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/offline.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
