# Evaluation on the test members, the figures, the results table, and the comparison study.
#
# A comparison study (comparison.enabled) runs this whole workflow twice as modules, once per arm:
# the online arm (SST, results/<study>/online/) and the offline arm (BP5, results/<study>/offline/),
# each with its own config (datamove.evaluation.arms). Both arms share the held-out and test members;
# the figures and the table compare them. Helpers: common.smk.

import time
from pathlib import Path

report: "../report/workflow.rst"


if COMPARISON:

    module online_arm:
        snakefile:
            "../../Snakefile"
        config:
            arm_config(config, "online")

    use rule * from online_arm exclude all, make_heldout as online_*

    module offline_arm:
        snakefile:
            "../../Snakefile"
        config:
            arm_config(config, "offline")

    use rule * from offline_arm exclude all, make_heldout as offline_*

    localrules:
        online_open_gate,


rule evaluate_model:
    # The trained model on every test member: errors per sample and maps of one member.
    input:
        cfg=study_path("config.yaml"),
        model=study_path("model.pt"),
        test=str(STUDY.test_dir),
    output:
        evaluation=study_path("evaluation.csv"),
        maps=study_path("maps.csv"),
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("evaluate_model", "evaluate_model"),
    params:
        datamove=DATAMOVE,
    shell:
        "{params.datamove} evaluate --config {input.cfg} --model {input.model} "
        "--out {output.evaluation} --maps {output.maps} > {log} 2>&1"


if not STUDY.arm:

    rule make_testset:
        # Test members with their own seed, written once with BP5; shared by the arms.
        input:
            cfg=study_path("config.yaml"),
        output:
            test=directory(str(STUDY.test_dir)),
        conda:
            "../envs/datamove.yaml"
        log:
            log_path("make_testset", "make_testset"),
        params:
            datamove=DATAMOVE,
        shell:
            "{params.datamove} make-testset --config {input.cfg} > {log} 2>&1"

    rule collect_figure_data:
        # Every number a figure or the table shows, in one tidy CSV (the figures read only this).
        input:
            unpack(figure_data_inputs),
        output:
            data=FIGURE_DATA,
        conda:
            "../envs/datamove.yaml"
        log:
            log_path("collect_figure_data", "collect_figure_data"),
        params:
            datamove=DATAMOVE,
        shell:
            "{params.datamove} figure-data --config {input.cfg} --out {output.data} > {log} 2>&1"

    for _figure in FIGURES:

        rule:
            name:
                f"plot_{_figure}"
            input:
                data=FIGURE_DATA,
            output:
                figure=report(figure_path(_figure), caption=f"../report/{_figure}.rst", category="Figures"),
            conda:
                "../envs/datamove.yaml"
            log:
                log_path(f"plot_{_figure}", _figure),
            params:
                datamove=DATAMOVE,
                figure=_figure,
            shell:
                "{params.datamove} plot --figure {params.figure} --data {input.data} --out {output.figure} "
                "> {log} 2>&1"

    rule make_results_table:
        # Last: printed at the end of the run (and saved), after every figure.
        input:
            data=FIGURE_DATA,
            figures=[figure_path(name) for name in FIGURES],
        output:
            table=report(TABLE, caption="../report/results.rst", category="Results"),
            markdown=study_path("results.md"),
        conda:
            "../envs/datamove.yaml"
        log:
            log_path("make_results_table", "make_results_table"),
        params:
            datamove=DATAMOVE,
        shell:
            "{params.datamove} results-table --data {input.data} --out {output.table} "
            "--markdown {output.markdown} 2>&1 | tee {log}"


    rule summarize:
        # The study's answer in a few lines (datamove.evaluation.summary): each arm's members and
        # test error, the improvement, what is on disk, where the figures and the report are.
        # Printed last by the run that made it (onsuccess below); the report's front page shows it.
        input:
            unpack(figure_data_inputs),
            table=TABLE,
        output:
            summary=report(SUMMARY, caption="../report/summary.rst", category="Results"),
        conda:
            "../envs/datamove.yaml"
        log:
            log_path("summarize", "summarize"),
        params:
            datamove=DATAMOVE,
            study=lambda wildcards, output: str(Path(output.summary).parent),
            configfiles=" ".join(f"--configfile {shlex.quote(str(path))}" for path in workflow.overwrite_configfiles or []),
        shell:
            "{params.datamove} summary {params.study} --out {output.summary} {params.configfiles} > {log} 2>&1"


# Printed after Snakemake's own lines, so that a study ends with its answer: by the run that made the
# summary (a run that made nothing new prints none; `datamove summary results/<study>` does).
_RUN_STARTED = time.time()

onsuccess:
    if not STUDY.arm and Path(SUMMARY).exists() and Path(SUMMARY).stat().st_mtime >= _RUN_STARTED:
        print(f"\n{Path(SUMMARY).read_text()}", flush=True)
