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
        unpack(simulate_inputs),  # the trainer's gate when streaming (SST); none for BP5 files
    output:
        marker=study_path("members", "member-{member}.json"),
    wildcard_constraints:
        member=r"\d{6}",
    # A rerun streams the member again; the trainer keeps the steps it already has.
    retries: STUDY.retries
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("simulate_member", "member-{member}"),
    threads: 1
    params:
        datamove=DATAMOVE,
        gate=gate_args,
    shell:
        "{params.datamove} simulate --config {input.cfg} --member {wildcards.member} {params.gate} "
        "--marker {output.marker} > {log} 2>&1"


rule simulate_members:
    # ensemble.members_per_job > 1: one job runs several members one after another (SST: in one
    # stream, stream.per_job), so that the start-up of a job, and of its stream, is paid once per
    # job. Writes each member's marker (members/member-K.json) once the trainer holds it, and the
    # job's summary as its output.
    input:
        unpack(simulate_inputs),
    output:
        marker=study_path("members", "job-{job}.json"),
    wildcard_constraints:
        job=r"\d{6}",
    # A rerun sends the job's members the trainer does not hold (their receipts), no others.
    retries: STUDY.retries
    conda:
        "../envs/datamove.yaml"
    log:
        log_path("simulate_members", "job-{job}"),
    threads: 1
    params:
        datamove=DATAMOVE,
        gate=gate_args,
    shell:
        "{params.datamove} simulate --config {input.cfg} --job {wildcards.job} {params.gate} "
        "--marker {output.marker} > {log} 2>&1"
