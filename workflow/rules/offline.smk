# The offline trainer: epochs over the member files that simulate_member wrote with BP5.

# Both trainers write the same outputs; stream.engine picks the one that runs.
if ONLINE:

    ruleorder: train_online > train_offline

else:

    ruleorder: train_offline > train_online


rule train_offline:
    # After every member has been written (its marker), unlike train_online, which reads streams.
    # In a comparison study the offline arm trains the online arm's budget (batches or seconds).
    input:
        unpack(offline_inputs),
    output:
        model=study_path("model.pt"),
        metrics=study_path("metrics.csv"),
        ledger=study_path("ledger.csv"),
        seen=study_path("seen.csv"),
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("train_offline", "train_offline"),
    threads: 1
    params:
        datamove=DATAMOVE,
        budget=offline_budget_args,
    shell:
        "{params.datamove} train-offline --config {input.cfg} --threads {threads} {params.budget} "
        "2>&1 | tee {log}"
