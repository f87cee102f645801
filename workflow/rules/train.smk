# The online trainer and the readiness gate that lets the solvers start once it reads streams.


rule train_online:
    # Independent of the solvers (it reads their streams, not their files) and first in line.
    input:
        unpack(train_inputs),
    output:
        model=study_path("model.pt"),
        metrics=study_path("metrics.csv"),
        ledger=study_path("ledger.csv"),
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("train_online", "train_online"),
    priority: 100
    threads: 1
    params:
        datamove=DATAMOVE,
    shell:
        # tee: training progress shows on the terminal as well as in the log; -i: a Ctrl-C leaves it
        # running, to copy what the trainer says while it checkpoints and stops.
        "{params.datamove} train --config {input.cfg} --threads {threads} 2>&1 | tee -i {log}"


localrules:
    open_gate,


rule open_gate:
    # Done once the trainer's heartbeat is fresh; every solver depends on it (design.md).
    input:
        cfg=study_path("config.yaml"),
    output:
        gate=temp(str(STUDY.gate_path)),
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("open_gate", "open_gate"),
    params:
        datamove=DATAMOVE,
    shell:
        # --this-run: the workflow cleared an earlier run's last beat (onstart, common.smk), so a
        # last beat is this run's trainer's: one that could not start fails the gate at once.
        "{params.datamove} wait-trainer --config {input.cfg} --this-run --touch {output.gate} > {log} 2>&1"
