# The ensemble: held-out members (BP5, once) and one streaming job per training member.


rule write_config:
    # The effective config (defaults filled, --config overrides applied), read by every datamove command.
    output:
        cfg=study_path("config.yaml"),
    params:
        config=config,
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("write_config", "write_config"),
    script:
        "../scripts/write_config.py"


rule make_heldout:
    input:
        cfg=study_path("config.yaml"),
    output:
        heldout=directory(str(STUDY.heldout_dir)),
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("make_heldout", "make_heldout"),
    params:
        datamove=DATAMOVE,
    shell:
        "{params.datamove} make-heldout --config {input.cfg} > {log} 2>&1"


rule simulate_member:
    # Waits for the gate, so it never opens a stream before the trainer reads (SST writers have no
    # open timeout of their own; stream.open_timeout_s guards it anyway).
    input:
        cfg=study_path("config.yaml"),
        gate=study_path(".gate"),
    output:
        marker=study_path("members", "member-{member}.json"),
    wildcard_constraints:
        member=r"\d{6}",
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("simulate_member", "member-{member}"),
    threads: 1
    params:
        datamove=DATAMOVE,
    shell:
        "{params.datamove} simulate --config {input.cfg} --member {wildcards.member} "
        "--marker {output.marker} > {log} 2>&1"
