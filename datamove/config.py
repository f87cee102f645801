"""The study configuration: validation against the JSON schema, defaults, and small typed views.

The schema (``datamove/schemas/config.schema.yaml``, linked from ``workflow/schemas/``) is the single
source of defaults and documentation. :func:`validate_config` fills the defaults into a plain dict
and turns every violation into a :class:`ConfigError` that names the key at fault; the frozen
dataclasses below are what the rest of the package receives.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from datamove.plugins import BUILTIN_MODELS, POLICY_GROUP, PROBLEM_GROUP, PluginError, installed, is_import_path
from datamove.problems import PROBLEMS, Problem, make_problem, problem_class
from datamove.sampling.samplers import member_params


class ConfigError(ValueError):
    """A configuration that breaks the schema or is impossible; the message names the key."""


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged into ``base``, except where the keys of a section belong to what the
    override replaces: a ``solver`` that names another problem (solver.name or solver.command)
    replaces the solver section and parameters.ranges, and a ``trainer.model`` that names another
    model replaces trainer.model_args. Both configs may be raw or validated: a key ``base`` leaves
    out has its schema default. Used for config/config.yaml under a --configfile (the workflow)
    and for a models study's problems and models (datamove.evaluation.models)."""
    out = copy.deepcopy(dict(base))
    props = load_schema()["properties"]
    solver, current = over.get("solver") or {}, out.get("solver") or {}
    if any(k in solver and solver[k] != current.get(k, props["solver"]["properties"][k].get("default"))
           for k in ("name", "command")):
        out["solver"] = {}
        out.setdefault("parameters", {})["ranges"] = {}
    trainer = over.get("trainer") or {}
    model = (out.get("trainer") or {}).get("model", props["trainer"]["properties"]["model"].get("default"))
    if "model" in trainer and trainer["model"] != model:
        out.setdefault("trainer", {})["model_args"] = {}
    return _deep_merge(out, over)


@functools.cache
def _parsed_schema() -> dict[str, Any]:
    text = resources.files("datamove").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def load_schema() -> dict[str, Any]:
    """The config schema, a fresh copy the caller may change, with the names of the installed
    plug-in problems (entry point group datamove.problems) among solver.name's and those of the
    installed reservoir policies among reservoir.policy's (their names only: a plug-in is loaded
    when a config names it, :func:`_take_problem`).

    Parsed once per process (about 50 ms of YAML) and copied per call (under 1 ms): a workflow
    validates and merges dozens of run configs while Snakemake parses it.
    """
    schema = copy.deepcopy(_parsed_schema())
    problems = sorted(set(installed(PROBLEM_GROUP)) - set(PROBLEMS))
    if problems:
        name = _problem_name(schema)
        name["enum"] += problems
        name[ERROR_HINT] = name[ERROR_HINT].replace("navier-stokes)", f"navier-stokes; installed: {', '.join(problems)})")
    policies = sorted(set(installed(POLICY_GROUP)) - set(_builtin_policies(schema)))
    if policies:
        _policy(schema)["enum"] += policies
        schema["properties"]["policy_study"]["properties"]["policies"]["items"]["enum"] += policies
    return schema


def _problem_name(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of solver.name where no solver.command is given: the problems it takes."""
    return schema["properties"]["solver"]["allOf"][0]["else"]["properties"]["name"]


def _policy(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["properties"]["reservoir"]["properties"]["policy"]


def _builtin_policies(schema: dict[str, Any]) -> list[str]:
    return list(_parsed_schema()["properties"]["reservoir"]["properties"]["policy"]["enum"])


def _take_policy(schema: dict[str, Any], raw: Mapping[str, Any]) -> None:
    """A config whose reservoir.policy is an import path: the schema's enum takes it once it names a
    Buffer subclass (PluginError naming the key otherwise)."""
    reservoir = raw.get("reservoir") if isinstance(raw.get("reservoir"), Mapping) else {}
    name = reservoir.get("policy")
    if isinstance(name, str) and is_import_path(name):
        from datamove.reservoir import policy_class  # imports torch: only for a policy from outside

        policy_class(name)
        _policy(schema)["enum"].append(name)


def _take_problem(schema: dict[str, Any], raw: Mapping[str, Any]) -> None:
    """A config whose solver.name names a problem from outside (an installed plug-in, an import
    path): the schema takes in its solver keys and parameter ranges (the Problem subclass's SOLVER
    and RANGES), so that they are checked and their defaults filled as a built-in problem's are.
    PluginError naming solver.name when the problem cannot be found or declares neither."""
    solver = raw.get("solver") if isinstance(raw.get("solver"), Mapping) else {}
    name = solver.get("name")
    if not isinstance(name, str) or solver.get("command") is not None or name in PROBLEMS:
        return
    if name not in installed(PROBLEM_GROUP) and not is_import_path(name):
        return  # the schema's enum refuses it, naming the problems it knows
    cls = problem_class(name).obj
    when = {"properties": {"name": {"const": name}, "command": {"type": "null"}}}
    schema["$defs"]["plugin_solver"] = {
        "description": f"{name}: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else 'a problem from outside'}",
        "additionalProperties": False,
        "properties": {"name": {}, "command": {}, "n_steps": {"$ref": "#/$defs/n_steps", "default": 100},
                       "step_delay_s": {"$ref": "#/$defs/step_delay_s", "default": 0.0}, **copy.deepcopy(cls.SOLVER)},
    }
    schema["$defs"]["plugin_ranges"] = {
        "additionalProperties": False,
        "properties": {p: {"$ref": "#/$defs/range", "default": [float(v) for v in r]} for p, r in cls.RANGES.items()},
    }
    name_schema = _problem_name(schema)
    if name not in name_schema["enum"]:
        name_schema["enum"].append(name)
    schema["properties"]["solver"]["allOf"].append({"if": when, "then": {"$ref": "#/$defs/plugin_solver"}})
    schema.setdefault("allOf", []).append({
        "if": {"properties": {"solver": when}},
        "then": {"properties": {"parameters": {"properties": {"ranges": {"$ref": "#/$defs/plugin_ranges"}}}}},
    })


MERGE_DEFAULT = "x-merge-default"
"""Schema annotation of a mapping whose given keys are merged over its default mapping, rather than
replacing it (``stream.parameters``: a user who sets one ADIOS2 parameter keeps the lossless rest)."""


ERROR_HINT = "x-error"
"""Schema annotation: what to say, after the value, when that schema rejects it (instead of
jsonschema's generic message), e.g. where the valid choices come from."""


def _with_defaults(validator_class):
    """A validator that fills ``default`` values in while it validates (also in nested objects)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" not in sub:
                    continue
                if key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
                elif sub.get(MERGE_DEFAULT) and isinstance(instance[key], dict):
                    instance[key] = {**copy.deepcopy(sub["default"]), **instance[key]}
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(raw: Mapping[str, Any] | None, *, source: str = "config") -> dict[str, Any]:
    """Validate a study configuration and return a copy with every default filled in.

    Raises:
        ConfigError: naming the offending key, for unknown keys, wrong types, out-of-range values
            and impossible combinations (a range with low > high, watermark > capacity, ...).
    """
    cfg = copy.deepcopy(dict(raw or {}))
    schema = load_schema()
    try:
        _take_problem(schema, cfg)
        _take_policy(schema, cfg)
    except PluginError as exc:
        raise ConfigError(f"invalid {source}:\n  {exc}") from None
    errors = sorted(_Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        lines = []
        for err in errors:
            if err.validator == "additionalProperties":
                extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                known = ", ".join(sorted(err.schema.get("properties", {})))
                for name in extra:
                    where = _key([*err.path, name])
                    lines.append(f"unknown key '{where}' (known keys here: {known})")
            elif ERROR_HINT in err.schema:
                lines.append(f"key '{_key(err.path)}': {err.instance!r} {err.schema[ERROR_HINT]}")
            else:
                lines.append(f"key '{_key(err.path)}': {err.message}")
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))
    _check_semantics(cfg, source)
    return cfg


def _window_too_long(tr: Mapping[str, Any], n_steps: int) -> str:
    """The message for an autoregressive window longer than a member (``n_steps``): it names the key
    to change and a value that fits: a smaller unroll, else bundle, else history; or the largest
    sample_stride that fits the window as it is."""
    h, k, n, s = tr["history"], tr["bundle"], tr["unroll"], tr["sample_stride"]
    window = h + n * k
    stride_fits = (n_steps - 1) // (window - 1)  # the largest s with (L - 1) s < n_steps, or 0

    def upto(v: int) -> str:
        return f"{v}" if v == 1 else f"{v} or less"

    stride_fix = f"trainer.sample_stride to {upto(stride_fits)}"
    if window == 2:
        return (
            f"key 'trainer.sample_stride': {s} leaves no autoregressive pair in a member of {n_steps} steps "
            f"(solver.n_steps): set {stride_fix}"
        )
    most = (n_steps - 1) // s + 1  # the longest window that fits, s apart
    if most < 2:  # not even a pair: only a smaller stride helps
        key, fix = "sample_stride", stride_fix if stride_fits >= 1 else f"trainer.sample_stride to {upto(n_steps - 1)}"
    elif (most - h) // k >= 1:
        key, fix = "unroll", f"trainer.unroll to {upto((most - h) // k)}"
    elif most - h >= 1:
        key, fix = "bundle", f"trainer.unroll to 1 and trainer.bundle to {upto(most - h)}"
    else:
        key, fix = "history", f"trainer.unroll and trainer.bundle to 1 and trainer.history to {upto(most - 1)}"
    also = f", or {stride_fix}" if key != "sample_stride" and stride_fits >= 1 else ""
    return (
        f"key 'trainer.{key}': {tr[key]}: a window of trainer.history + trainer.unroll x trainer.bundle = "
        f"{h} + {n} x {k} = {window} steps, {s} apart (trainer.sample_stride), is longer than a member of "
        f"{n_steps} steps (solver.n_steps): "
        + (f"windows of at most {most} steps fit" if most > 1 else "not even a pair fits")
        + f": set {fix}{also}"
    )


def _check_plugin_model(tr: Mapping[str, Any], problem) -> list[str]:
    """A model from outside the package (an installed plug-in, an import path, a grid network):
    found, takes its model_args, builds, and maps a dry batch to the shape of a prediction
    (datamove.models.check_model; imports torch, which a built-in name does not need here)."""
    from datamove.models import check_model

    n_fields = len(problem.fields)
    in_fields = tr["history"] * n_fields if tr["sample"] == "autoregressive" else 0
    try:
        check_model(tr["model"], dict(tr["model_args"]), in_dim=problem.n_inputs,
                    out_shape=(tr["bundle"] * n_fields, *problem.field_shape), in_fields=in_fields)
    except PluginError as exc:
        return [str(exc)]
    return []


def _check_semantics(cfg: dict[str, Any], source: str) -> None:
    """What JSON schema cannot say: relations between values."""
    problems = []
    for name, (low, high) in cfg["parameters"]["ranges"].items():
        if not (math.isfinite(low) and math.isfinite(high)):
            problems.append(f"key 'parameters.ranges.{name}': bounds must be finite, got [{low}, {high}]")
        elif low > high:
            problems.append(f"key 'parameters.ranges.{name}': low {low} > high {high}")
    if not problems:
        try:
            problem = make_problem(cfg["solver"], cfg["parameters"]["ranges"])
        except ValueError as exc:
            problems.append(f"key 'solver': {exc}")
        else:
            field = cfg["evaluation"]["map_field"]
            if field is not None and field not in problem.fields:
                problems.append(
                    f"key 'evaluation.map_field': '{field}' is not a field of solver '{problem.name}' "
                    f"(fields: {', '.join(problem.fields)})"
                )
            tr = cfg["trainer"]
            window = tr["history"] + tr["unroll"] * tr["bundle"]
            if tr["sample"] == "autoregressive" and (window - 1) * tr["sample_stride"] >= problem.n_steps:
                problems.append(_window_too_long(tr, problem.n_steps))
            elif tr["model"] not in BUILTIN_MODELS:
                problems.extend(_check_plugin_model(tr, problem))
    tr = cfg["trainer"]
    if tr["val_rollout_every"]:
        if tr["sample"] != "autoregressive":
            problems.append(
                f"key 'trainer.val_rollout_every': {tr['val_rollout_every']} needs autoregressive samples "
                f"(trainer.sample is {tr['sample']}: a direct model has no rollout); set it to 0"
            )
        elif tr["val_rollout_every"] % tr["log_every"]:
            problems.append(
                f"key 'trainer.val_rollout_every': {tr['val_rollout_every']} is not a multiple of "
                f"trainer.log_every {tr['log_every']} (the rollout error is a column of the metrics rows)"
            )
    res = cfg["reservoir"]
    if res["watermark"] > res["capacity"]:
        problems.append(
            f"key 'reservoir.watermark': {res['watermark']} exceeds reservoir.capacity {res['capacity']}"
        )
    if tr["sample"] == "direct":
        for key in ("history", "bundle", "unroll"):
            if tr[key] > 1:
                problems.append(
                    f"key 'trainer.{key}': {tr[key]} needs trainer.sample autoregressive (a direct sample is "
                    f"one step, from its time alone): set trainer.{key} to 1, or trainer.sample to autoregressive"
                )
        if tr["target"] == "delta":
            problems.append(
                "key 'trainer.target': delta needs trainer.sample autoregressive (a direct sample has no input "
                "fields to change from): set trainer.target to state, or trainer.sample to autoregressive"
            )
        if tr["input_noise"] > 0:
            problems.append(
                f"key 'trainer.input_noise': {tr['input_noise']} needs trainer.sample autoregressive (a direct "
                "sample has no input fields to add noise to): set trainer.input_noise to 0"
            )
    if tr["slots"] < tr["ingest_workers"]:
        problems.append(
            f"key 'trainer.slots': {tr['slots']} is fewer than trainer.ingest_workers {tr['ingest_workers']} "
            "(each ingest worker owns at least one slot)"
        )
    elif tr["sample"] == "autoregressive":
        # A worker's member keeps its last (L - 1) s steps in their slots until the windows they
        # start are complete: with no slot beyond those, the next step could never be read.
        kept = (tr["history"] + tr["unroll"] * tr["bundle"] - 1) * tr["sample_stride"]
        if tr["slots"] // tr["ingest_workers"] <= kept:
            problems.append(
                f"key 'trainer.slots': {tr['slots']} gives each of the {tr['ingest_workers']} ingest workers "
                f"{tr['slots'] // tr['ingest_workers']} slots; autoregressive samples keep a member's last "
                f"{kept} steps in their slots (a window of trainer.history + trainer.unroll x trainer.bundle steps, "
                f"trainer.sample_stride apart, less one), so each worker needs at least {kept + 1}: set "
                f"trainer.slots to {tr['ingest_workers'] * (kept + 1)} or more"
            )
    if cfg["heldout"]["seed"] == cfg["ensemble"]["seed"]:
        problems.append(
            "key 'heldout.seed': equals ensemble.seed, so held-out members would repeat training members"
        )
    for other in ("ensemble", "heldout"):
        if cfg["test"]["seed"] == cfg[other]["seed"]:
            problems.append(
                f"key 'test.seed': equals {other}.seed, so test members would repeat {other} members"
            )
    if cfg["evaluation"]["map_member"] >= cfg["test"]["n_members"]:
        problems.append(
            f"key 'evaluation.map_member': {cfg['evaluation']['map_member']} is not a test member "
            f"(test.n_members is {cfg['test']['n_members']})"
        )
    xml = cfg["stream"]["xml_config"]
    if xml is not None:
        problems += _check_adios_xml(Path(xml), cfg["stream"]["engine"])
    if problems:
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(problems))


def _check_adios_xml(path: Path, engine: str) -> list[str]:
    """The XML must configure the IO DATAMOVE declares, with the engine that names the streams.

    Why: ADIOS2 silently returns an unconfigured IO (engine 'File') when the file lacks it.
    """
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return [f"key 'stream.xml_config': file not found: {path}"]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return [f"key 'stream.xml_config': {path} is not valid XML: {exc}"]
    io = root.find(".//io[@name='datamove']")
    if io is None:
        return [f"key 'stream.xml_config': {path} has no <io name=\"datamove\">"]
    node = io.find("engine")
    xml_engine = node.get("type", "") if node is not None else ""
    if xml_engine.upper() != engine.upper():
        return [
            f"key 'stream.xml_config': {path} sets engine '{xml_engine}' but stream.engine is "
            f"'{engine}' (stream names follow stream.engine: make them agree)"
        ]
    return []


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return validate_config(raw, source=f"config file {path}")


# --------------------------------------------------------------------------- typed views


def _sampling(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: section[k] for k in ("seed", "n_members")}


@dataclass(frozen=True, kw_only=True)
class AdaptiveConfig:
    """``parameters.adaptive``: the trainer's proposals under ``sampler: adaptive``
    (datamove.sampling.proposals)."""

    base: str  # the sampler of draws without a proposal, of the uniform share, and of held-out and test members
    publish_every: int  # batches between two proposals
    uniform_share: float  # share of draws from the base sampler
    spread: float  # standard deviation of each mixture component, as a share of each range
    top_k: int  # members of highest loss the mixture is centred on
    probe_samples: int  # reservoir samples the per-member loss is measured on at each proposal
    statistic: str  # "trained": the loss over samples drawn at least once; "all": over every held sample


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How the parameters of a set of members are drawn; ``sampler`` is a fixed design (uniform,
    lhs, halton). ``adaptive``: the training ensemble of ``sampler: adaptive``, whose members draw
    from the trainer's proposals, ``sampler`` being their base (see datamove.sampling.proposals)."""

    sampler: str
    seed: int
    n_members: int
    names: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    adaptive: AdaptiveConfig | None = None

    def params(self, member: int):
        """The parameters of member ``member`` (float64 [n_params]); the same on every run."""
        return member_params(
            ranges=self.ranges, sampler=self.sampler, seed=self.seed, member=member, n_members=self.n_members
        )

    def seed_of(self, member: int) -> tuple[int, int]:
        """The seed of member ``member``'s own randomness (a solver's random initial field)."""
        return (self.seed, member)


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    engine: str
    parameters: Mapping[str, str]
    xml_config: str | None
    open_timeout_s: float
    member_timeout_s: float
    # SST, several members a job: one stream for the job's members (the many-members form of the
    # contract), not one each (see StudyConfig.job_streams for when it applies).
    per_job: bool = True
    # SST across hosts: the network interface whose IPv4 address streams listen on and publish
    # (None: loopback, one host; datamove.streaming.sockets).
    interface: str | None = None


@dataclass(frozen=True, kw_only=True)
class ReservoirConfig:
    policy: str
    capacity: int
    watermark: int
    on_full: str


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    model: str
    model_args: Mapping[str, Any]
    sample: str  # direct | autoregressive (datamove.problems.samples.SampleSpec)
    sample_stride: int  # autoregressive: step k -> step k + sample_stride
    history: int  # autoregressive: h, the input steps of one application of the model
    bundle: int  # autoregressive: K, the steps one application predicts
    unroll: int  # autoregressive: n, applications a training sample spans (windows of h + n K steps)
    pushforward: bool  # unroll: gradients through the last application only
    unroll_warmup: int  # unroll: batches over which the unroll grows from 1 to n (0: none)
    target: str  # state | delta: what the network predicts (datamove.models.Surrogate)
    input_noise: float  # autoregressive: std of the noise on the train step's input fields, normalised
    val_rollout_every: int  # autoregressive: batches between two rollouts of the held-out members (0: never)
    precision: str  # fp32 | bf16 | fp16: the train step's autocast (datamove.training.step.MixedPrecision)
    batch_size: int
    lr: float
    weight_decay: float
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    extra_batches: int
    batch_budget: int | None  # online: exactly this many batches in all (None: extra_batches after the end)
    paced: bool  # online, with batch_budget: batch k waits for k / batch_budget of the expected steps
    log_every: int
    checkpoint_every: int
    world_size: int
    device: str
    seed: int
    ingest_workers: int
    overlap_intake: bool  # online: the intake runs on a second thread during each train step
    ingest_nice: int
    slots: int
    heartbeat_s: float
    tensorboard: bool  # also log metrics to TensorBoard (StudyConfig.tensorboard_dir)


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """The readiness gate that starts the solvers once the trainer reads streams."""

    timeout_s: float


@dataclass(frozen=True, kw_only=True)
class OfflineConfig:
    """The offline trainer: epochs over the BP5 member files."""

    epochs: int
    max_batches: int | None
    max_seconds: float | None
    reader: str
    loader_workers: int


@dataclass(frozen=True, kw_only=True)
class ComparisonConfig:
    """Online against offline in one study (see the schema's ``comparison``)."""

    enabled: bool
    offline_members: int
    budget: str


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    enabled: bool
    map_member: int
    map_field: str | None
    map_max_side: int


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """A validated study configuration; ``raw`` keeps the full dict (saved in checkpoints)."""

    study: str
    results_dir: Path
    data_dir: Path
    problem: Problem
    ensemble: SamplingConfig
    heldout: SamplingConfig
    retries: int
    stream: StreamConfig
    reservoir: ReservoirConfig
    trainer: TrainerConfig
    gate: GateConfig
    raw: Mapping[str, Any] = field(repr=False)
    arm: str | None
    members_per_job: int
    solver_nice: int  # ensemble.nice
    test: SamplingConfig
    offline: OfflineConfig
    comparison: ComparisonConfig
    evaluation: EvaluationConfig

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> StudyConfig:
        """Build from a dict already passed through :func:`validate_config`."""
        problem = make_problem(cfg["solver"], cfg["parameters"]["ranges"])
        names, ranges = problem.param_names, problem.param_ranges
        sampler = cfg["parameters"]["sampler"]
        adaptive = None
        if sampler == "adaptive":
            # Only the training ensemble adapts; held-out and test members keep the base design.
            adaptive = AdaptiveConfig(**cfg["parameters"]["adaptive"])
            sampler = adaptive.base
        t = cfg["trainer"]
        return cls(
            study=cfg["study"],
            results_dir=Path(cfg["results_dir"]),
            data_dir=Path(cfg["data_dir"]),
            problem=problem,
            ensemble=SamplingConfig(sampler=sampler, names=names, ranges=ranges, adaptive=adaptive,
                                    **_sampling(cfg["ensemble"])),
            heldout=SamplingConfig(sampler=sampler, names=names, ranges=ranges, **_sampling(cfg["heldout"])),
            retries=cfg["ensemble"]["retries"],
            stream=StreamConfig(**cfg["stream"]),
            reservoir=ReservoirConfig(**cfg["reservoir"]),
            trainer=TrainerConfig(
                **{**t, "lr_milestones": tuple(t["lr_milestones"])}
            ),
            gate=GateConfig(**cfg["gate"]),
            raw=copy.deepcopy(dict(cfg)),
            arm=cfg["arm"],
            members_per_job=cfg["ensemble"]["members_per_job"],
            solver_nice=cfg["ensemble"]["nice"],
            test=SamplingConfig(
                sampler=sampler, names=names, ranges=ranges,
                seed=cfg["test"]["seed"], n_members=cfg["test"]["n_members"],
            ),
            offline=OfflineConfig(**cfg["offline"]),
            comparison=ComparisonConfig(**cfg["comparison"]),
            evaluation=EvaluationConfig(**cfg["evaluation"]),
        )

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
        return cls.from_dict(load_config(path))

    # Where things live. One place, so the CLI, the workflow and the tests agree.
    @property
    def study_dir(self) -> Path:
        """results/<study>/, or results/<study>/<arm>/ for an arm of a comparison study."""
        base = self.results_dir / self.study
        return base / self.arm if self.arm else base

    @property
    def job_streams(self) -> bool:
        """Whether a simulation job sends its members in one stream (the many-members form):
        stream.per_job, with SST, several members a job, one trainer process (a data-parallel
        trainer's ranks each read their own members, which a job's consecutive ids are not), and
        the built-in solvers (a solver command writes one member a launch)."""
        return (self.stream.per_job and self.stream.engine.upper() == "SST" and self.members_per_job > 1
                and self.trainer.world_size == 1 and not self.problem.command)

    @property
    def stream_dir(self) -> Path:
        """Contact files (SST) or member files (BP5) of the training ensemble."""
        return self.study_dir / "streams"

    @property
    def heldout_dir(self) -> Path:
        return self.data_dir / self.study / "heldout"

    @property
    def test_dir(self) -> Path:
        """The test members (BP5), shared by the arms of a comparison study."""
        return self.data_dir / self.study / "test"

    @property
    def heartbeat_path(self) -> Path:
        return self.study_dir / "trainer.heartbeat.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.study_dir / "checkpoint.pt"

    @property
    def gate_path(self) -> Path:
        """The workflow's readiness gate (open_gate's output: the beat of the trainer that opened it)."""
        return self.study_dir / ".gate"

    @property
    def lock_path(self) -> Path:
        return self.study_dir / "trainer.lock"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files of the trainer's metrics (trainer.tensorboard)."""
        return self.study_dir / "tensorboard"

    def member_marker(self, member: int) -> Path:
        """Written by the workflow's simulate_member job once the member has been sent."""
        return self.study_dir / "members" / f"member-{member:06d}.json"

    def job_marker(self, job: int) -> Path:
        """Written by the workflow's simulate_members job (ensemble.members_per_job > 1) once its
        members have been sent."""
        return self.study_dir / "members" / f"job-{job:06d}.json"

    def member_failure(self, member: int) -> Path:
        """Written by a failed launch of the member's solver: attempt, reason, whether it was the last."""
        return self.study_dir / "members" / f"member-{member:06d}.failed.json"

    def member_start(self, member: int) -> Path:
        """Written by the member's job when it starts the member (how many times it was started):
        the trainer's "never connected" clock runs only for a member that was started, never for
        one waiting in Snakemake's or the cluster's queue."""
        return self.study_dir / "members" / f"member-{member:06d}.started.json"

    @property
    def resume_path(self) -> Path:
        """Written by a trainer that finished with members lost: an input of train_online, so that
        the same command, rerun, resumes the trainer from its final checkpoint and sends them."""
        return self.study_dir / "trainer.resume.json"

    @property
    def launch_stop_path(self) -> Path:
        """Written by the workflow when Snakemake stops launching jobs (a job failed without
        --keep-going, or an interrupt): the trainer stops waiting for members never started."""
        return self.study_dir / "launches.stopped.json"

    def member_receipt(self, member: int) -> Path:
        """Written by the trainer once the member's steps are all received and in a checkpoint (or,
        without checkpoints, received): its solver writes its marker only then, and a rerun of
        the member finds it and has nothing to send (datamove.ensemble.members)."""
        return self.study_dir / "members" / f"member-{member:06d}.received.json"


def write_config(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Validate ``cfg`` and write it, defaults filled in, as YAML (the workflow's per-study config)."""
    cfg = validate_config(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
