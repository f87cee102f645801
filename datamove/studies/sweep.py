"""A study of studies as a sweep: a base config, named axes, and per kind only its table.

A *kind* of study (models, diversity, sampling, policies: :data:`datamove.studies.KINDS`) declares

- its schema section (``model_study``, ...), the folder of its outputs under
  ``<results_dir>/<study>/`` and the names of its rules (``workflow/rules/studies.smk`` makes the
  same three rules of every kind from these declarations);
- its **axes**: each reads a list or a mapping of its section and gives, per value, the fields it
  sets in the run (``model: fno``) and an override deep-merged into the base config
  (:func:`datamove.config.merge_config`: a solver of another problem or another trainer.model
  replaces the sections that belong to it). A run is one value of every axis; runs go in the order
  of the kind's ``loop`` (outermost first), and a study's ``only.<axis>`` runs part of them;
- what a run must leave (its rule's outputs and the ledger that must be complete) and, in its own
  module, the CSV tables collected from the runs' folders and the Markdown and figure built from
  them (:mod:`datamove.studies.tables`).

What every kind gets from here, and no kind writes again: the run names and configs (a run's only
input is its own config: a run added to a study, or done again, redoes no other), the checks that
name the key at fault (a selection naming what the study does not have; a seed that equals the
held-out or test seed; model_args a model does not take; runs of a group that would be tested on
other test members), the nested run's targets, and the check that its ledger is complete.
"""

from __future__ import annotations

import copy
import itertools
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from datamove.config import StudyConfig, load_schema, merge_config, validate_config


@dataclass(frozen=True, kw_only=True)
class Axis:
    """One named axis of a sweep.

    ``key`` is the section's key the axis reads and the key of ``only.<key>`` that selects its
    values (by the first field, compared as text, since snakemake --config hands nested values over
    as strings); ``values(cfg)`` lists the study's values in order, each as the run fields it sets;
    ``override(cfg, fields)`` is the config override of a value (of the study or not: a run's
    config does not depend on which other values the study has).
    """

    key: str
    fields: tuple[str, ...]
    values: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
    override: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
    #: Whether ``only.<key>`` may select values of this axis.
    selectable: bool = True
    #: Whether the section's ``key`` maps names to config overrides (checked: no run holds a study).
    overrides: bool = False


def named(section: str, key: str, field_: str, *, default: Callable[[Mapping[str, Any]], str]) -> Axis:
    """An axis over ``section.key``, a mapping name -> config overrides; empty: one value, the
    config's own (named ``default(cfg)``, with no override)."""

    def mapping(cfg: Mapping[str, Any]) -> dict[str, Any]:
        return dict(cfg[section][key]) or {default(cfg): {}}

    def override(cfg: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
        names = mapping(cfg)
        if fields[field_] not in names:
            raise ValueError(f"key '{section}.{key}': no {field_} {fields[field_]!r} (the study has "
                             f"{', '.join(map(str, names))})")
        return dict(names[fields[field_]])

    return Axis(key=key, fields=(field_,), values=lambda cfg: [{field_: name} for name in mapping(cfg)],
                override=override, overrides=True)


def listed(section: str, key: str, field_: str, path: str, *,
           every: Callable[[], list[Any]] | None = None) -> Axis:
    """An axis over the list ``section.key`` (empty: ``every()``, where given), each value set at
    the dotted config ``path``."""

    def values(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{field_: value} for value in (cfg[section][key] or (every() if every else []))]

    return Axis(key=key, fields=(field_,), values=values, override=lambda cfg, fields: nested(path, fields[field_]))


def seed_axis(section: str) -> Axis:
    """``section.seeds``: each value is ensemble.seed and trainer.seed of a run."""
    return Axis(key="seeds", fields=("seed",), values=lambda cfg: [{"seed": int(k)} for k in cfg[section]["seeds"]],
                override=lambda cfg, fields: {"ensemble": {"seed": int(fields["seed"])},
                                              "trainer": {"seed": int(fields["seed"])}})


def study_sections() -> set[str]:
    """The schema's sections of studies of studies (``*_study``: one per kind)."""
    return {key for key in load_schema()["properties"] if key.endswith("_study")}


def nested(path: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for the dotted ``path`` ``a.b``."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def selected(names: Iterable[Any], chosen: Sequence[Any] | None) -> list[Any]:
    """``names`` that ``chosen`` (a study's ``only.<key>``) names, in their order; all where it
    names none. Compared as text: snakemake --config hands nested values over as strings."""
    wanted = {str(c) for c in chosen or []}
    return [n for n in names if not wanted or str(n) in wanted]


@dataclass(frozen=True)
class Run:
    """One run of a study: its name (its folder under ``runs/``) and the value of every field."""

    name: str
    values: Mapping[str, Any]

    def key(self, fields: Sequence[str]) -> tuple:
        return tuple(self.values[f] for f in fields)


@dataclass(frozen=True, kw_only=True)
class StudyKind:
    """The declaration of a kind of study (the module docstring)."""

    #: The kind's name: its folder under <results_dir>/<study>/ and `datamove study-table`'s argument.
    name: str
    #: Its schema section.
    section: str
    #: Its rules: write_<rule>_config, run_<rule>_study, and the target that makes its table.
    rule: str
    target: str
    #: Axes in the order their overrides are merged into the base.
    axes: tuple[Axis, ...]
    #: Axis keys, outermost first: the order of the runs (and of the table's rows).
    loop: tuple[str, ...]
    #: str.format pattern of a run's name from its fields; names have no "/" and are unambiguous.
    run_name: str
    #: The columns that name a run in the kind's summary table (its fields, as the table orders them).
    key: tuple[str, ...]
    #: Sections a run's own config resets (a run is one study: its nested workflow plans no study).
    resets: Mapping[str, Any]
    #: The kind's settings after the axes' overrides (arms, engines, budgets); may raise ValueError.
    settle: Callable[[dict[str, Any], Mapping[str, Any]], None]
    #: Files a run's folder must hold when it is done (the run rule's outputs), and its ledger.
    run_outputs: Mapping[str, str]
    ledger: str
    #: Whether a run makes its own figures (its default targets) or only its outputs and members.
    run_figures: Callable[[Mapping[str, Any]], bool]
    #: Fields within which every run must be tested on the same test members (() : all runs).
    same_tests_within: tuple[str, ...] = ()
    #: Whether the study declares anything to check beyond the config itself (its section).
    declared: Callable[[Mapping[str, Any]], bool] = lambda section: True
    #: Extra checks before the generic ones (a clearer message for a kind's own mistake).
    check_first: Callable[[Mapping[str, Any]], None] = lambda cfg: None
    #: The config a run starts from: the study's (default) or another (a policy setting's file).
    base_of: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]] = lambda cfg, values: cfg
    #: The table: role -> file name in the kind's folder (CSV files, then "markdown" and "figure"),
    #: the frames of the CSV roles from the runs' folders (``collect``: run key -> folder), and
    #: the Markdown and figure from them (``report(frames, paths, **options)``, returns the text).
    tables: Mapping[str, str]
    collect: Callable[[Mapping[tuple, Path]], dict[str, pd.DataFrame]]
    report: Callable[..., str]
    #: The caption of the figure in `snakemake --report` (workflow/report/).
    caption: str

    # ----------------------------------------------------------------------------- runs

    def study(self, cfg: Mapping[str, Any]) -> Mapping[str, Any]:
        return cfg[self.section]

    def fields(self) -> tuple[str, ...]:
        return tuple(f for axis in self.axes for f in axis.fields)

    def runs(self, cfg: Mapping[str, Any]) -> list[Run]:
        """Every run that ``only`` selects (all where it selects none), in the order of ``loop``."""
        only = self.study(cfg).get("only") or {}
        values: dict[str, list[dict[str, Any]]] = {}
        for axis in self.axes:
            entries = axis.values(cfg)
            if axis.selectable:
                chosen = {str(v) for v in selected([e[axis.fields[0]] for e in entries], only.get(axis.key))}
                entries = [e for e in entries if str(e[axis.fields[0]]) in chosen]
            values[axis.key] = entries
        combos = itertools.product(*(values[key] for key in self.loop))
        return [self.run_of(**{k: v for part in combo for k, v in part.items()}) for combo in combos]

    def run_of(self, **values: Any) -> Run:
        """The run of these field values (of the study or not)."""
        return Run(self.run_name.format(**values), values)

    def run_config(self, base: Mapping[str, Any], *, root: str | Path, data_root: str | Path,
                   **values: Any) -> dict[str, Any]:
        """The validated config of the run of ``values``: ``base_of`` with every axis's override
        merged in, in the order of the axes, the run's name and folders, the sections of
        ``resets`` reset and the kind's own settings (``settle``).

        Raises ValueError naming the key where the run's seed is its held-out or test seed (its
        members would repeat training members), or where ``settle`` refuses it; ConfigError from
        validation."""
        run = self.run_of(**values)
        cfg = dict(self.base_of(base, values))
        for axis in self.axes:
            cfg = merge_config(cfg, axis.override(base, values))
        cfg.update(study=run.name, arm=None, results_dir=str(root), data_dir=str(data_root))
        cfg.update({section: copy.deepcopy(value) for section, value in self.resets.items()})
        if "seed" in values:
            for other in ("heldout", "test"):
                if int(values["seed"]) == cfg[other]["seed"]:
                    raise ValueError(f"key '{self.section}.seeds': seed {values['seed']} equals {other}.seed, so "
                                     f"{other} members would repeat training members")
        self.settle(cfg, values)
        return validate_config(cfg, source=f"{self.name} study run {run.name}")

    # ----------------------------------------------------------------------------- checks

    def check(self, cfg: Mapping[str, Any]) -> None:
        """Before any run: ``only`` names what the study has, no run holds another study, and,
        where the study declares anything, every run's config is valid (one per value of every
        axis but the seeds, with the first seed: seeds change only ensemble.seed and trainer.seed),
        no seed is a held-out or test seed, trainer.model_args are the model's, and the runs that
        must be are tested on the same test members.

        Raises ValueError (or ConfigError, from validating a run's config) naming the key at fault."""
        st = self.study(cfg)
        only = st.get("only") or {}
        for axis in self.axes:
            if axis.selectable and axis.key in only:
                have = [fields[axis.fields[0]] for fields in axis.values(cfg)]
                unknown = [n for n in only[axis.key] if str(n) not in {str(h) for h in have}]
                if unknown:
                    raise ValueError(f"key '{self.section}.only.{axis.key}': {unknown[0]!r} is not one of the "
                                     f"study's {axis.key} ({', '.join(map(str, have))}: {self.section}.{axis.key})")
        sections = study_sections()
        for axis in (a for a in self.axes if a.overrides):
            for name, over in st[axis.key].items():
                inner = sorted(sections & set(over))
                if inner:
                    raise ValueError(f"key '{self.section}.{axis.key}.{name}.{inner[0]}': a run cannot hold another study")
        self.check_first(cfg)
        if not self.declared(st):
            return
        all_seeds = [int(k) for k in st.get("seeds", [])]
        groups: dict[tuple, tuple[dict[str, Any], dict[str, Any]]] = {}
        for values in self._representatives(cfg):
            run = self.run_config(cfg, root="results", data_root="data", **values)
            where = ", ".join(f"{f} {values[f]!r}" for f in self.fields() if f != "seed")
            for k in all_seeds:  # every seed, where a run's config sees only its own
                for other in ("heldout", "test"):
                    if k == run[other]["seed"]:
                        raise ValueError(f"key '{self.section}.seeds': seed {k} equals {other}.seed of {where}, so "
                                         f"{other} members would repeat training members")
            check_model_args(run, self._override_key(values, ("model",)))
            ident = identity_of_test_members(run)
            group = tuple(values[f] for f in self.same_tests_within)
            if group not in groups:
                groups[group] = (values, ident)
                continue
            first, reference = groups[group]
            key = differing_key(ident, reference)
            if key is not None:
                differ = tuple(f for f in self.fields() if values[f] != first[f])
                within = "".join(f" of {f} {values[f]!r}" for f in self.same_tests_within)
                there = ", ".join(f"{f} {first[f]!r}" for f in self.fields() if f != "seed")
                raise ValueError(
                    f"key '{self._override_key(values, differ)}': sets {key} to {ident.get(key)!r} ({where}) where "
                    f"{there} has {reference.get(key)!r}, so the runs{within} would be tested on different test "
                    "members; set it in the config, for every run, or not at all"
                )

    def _override_key(self, values: Mapping[str, Any], fields: Sequence[str]) -> str:
        """The key of the first named-overrides axis that sets one of ``fields``, with the run's
        value (model_study.models.fno), else the section."""
        for axis in self.axes:
            if axis.overrides and set(axis.fields) & set(fields):
                return f"{self.section}.{axis.key}.{values[axis.fields[0]]}"
        return self.section

    def _representatives(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One run's values per value of every axis but the seeds, with the first seed."""
        parts = []
        for axis in self.axes:
            entries = axis.values(cfg)
            parts.append(entries[:1] if axis.fields == ("seed",) else entries)
        return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*parts)]

    # ----------------------------------------------------------------------------- the nested run

    def targets(self, cfg_path: str | Path, folder: str | Path, *, figures: bool) -> str:
        """A run's targets in its nested workflow: its default targets ("") where it makes its
        figures, else its ``run_outputs`` and the member markers beside its ledger: the trainer
        does not depend on its solvers, so without them as targets no member would run."""
        if figures:
            return ""
        ensemble = yaml.safe_load(Path(cfg_path).read_text())["ensemble"]
        n, k = ensemble["n_members"], ensemble["members_per_job"]
        members = (Path(folder) / self.ledger).parent / "members"
        names = [f"job-{j:06d}" for j in range(-(-n // k))] if k > 1 else [f"member-{m:06d}" for m in range(n)]
        paths = [*(Path(folder) / out for out in self.run_outputs.values()), *(members / f"{name}.json" for name in names)]
        return " ".join(shlex.quote(str(path)) for path in paths)


# --------------------------------------------------------------------------------- shared checks


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out or {prefix: {}}
    return {prefix: value}


def identity_of_test_members(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a run's test members, flattened to keys: the solver, the parameter ranges,
    the test sampler (parameters.sampler, or adaptive's base) and the test section."""
    test = StudyConfig.from_dict(cfg).test
    return {**_flat(cfg["solver"], "solver"), **_flat(cfg["parameters"]["ranges"], "parameters.ranges"),
            "parameters.sampler (of the test members)": test.sampler, **_flat(cfg["test"], "test")}


def differing_key(ident: Mapping[str, Any], reference: Mapping[str, Any]) -> str | None:
    """The first key (sorted) where two :func:`identity_of_test_members` differ, else None."""
    return next((k for k in sorted(set(ident) | set(reference)) if ident.get(k) != reference.get(k)), None)


def check_model_args(cfg: Mapping[str, Any], where: str) -> None:
    """trainer.model_args must be arguments of trainer.model (their values are checked when a run
    builds the model): a typo would otherwise fail only when its run starts, hours into a study."""
    from datamove.models import model_arguments

    name, args = cfg["trainer"]["model"], cfg["trainer"]["model_args"]
    takes, anything = model_arguments(name, model_args=args)
    unknown = sorted(set(args) - set(takes))
    if unknown and not anything:
        raise ValueError(f"key '{where}': trainer.model_args {unknown} are not arguments of model {name!r} "
                         f"(it takes {', '.join(sorted(takes))})")


def require_complete(ledger_path: str | Path) -> None:
    """Exit with an error naming the lost members unless every member of a run arrived whole: a run
    that lost members (a crashed stream) is not comparable with the others, so it is retried."""
    ledger = pd.read_csv(ledger_path)
    lost = ledger[(ledger["status"] != "complete") | (ledger["steps_received"] < ledger["steps_expected"])]
    if len(lost):
        rows = "; ".join(f"member {r.member}: {r.status}, {r.steps_received}/{r.steps_expected} steps, {r.reason}"
                         for r in lost.itertuples())
        raise SystemExit(f"{ledger_path}: {len(lost)} member(s) incomplete, the run is not comparable: {rows}")


@dataclass(frozen=True)
class Plan:
    """A kind's study in a workflow: its runs and, for its rules, every path, config and check.

    ``root`` is the kind's folder (``<results_dir>/<study>/<kind>/``) and ``data_root`` that of its
    runs' data. The methods taking ``wildcards`` are the rules' input and params functions.
    """

    kind: StudyKind
    cfg: Mapping[str, Any]
    root: str
    data_root: str

    @property
    def study(self) -> Mapping[str, Any]:
        return self.kind.study(self.cfg)

    @property
    def runs(self) -> list[Run]:
        return self.kind.runs(self.cfg)

    @property
    def run_dir(self) -> str:
        return f"{self.root}/runs"

    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    def run_config(self, wildcards) -> dict[str, Any]:
        """The run's own config, not the study's: a run is rerun when its config changes, not when
        another run is added to the study or ``only`` selects others."""
        run = next(r for r in self.runs if r.name == wildcards.run)
        return self.kind.run_config(self.cfg, root=self.run_dir, data_root=self.data_root, **run.values)

    def folder(self, wildcards) -> str:
        return f"{self.run_dir}/{wildcards.run}"

    def ledger(self, wildcards) -> str:
        return f"{self.folder(wildcards)}/{self.kind.ledger}"

    def targets(self, wildcards, input) -> str:
        return self.kind.targets(input.cfg, self.folder(wildcards), figures=self.kind.run_figures(self.study))

    def table_inputs(self, wildcards) -> list[str]:
        """Every run's outputs, once the study is checked: the check runs when the table is wanted
        (an input function), not in every workflow that merely has the kind's defaults."""
        self.kind.check(self.cfg)
        return [f"{self.run_dir}/{run.name}/{out}" for run in self.runs for out in self.kind.run_outputs.values()]

    def table_runs(self) -> list[list[Any]]:
        """[*fields, folder] of every run, in order: the table script's ``runs``."""
        return [[*run.key(self.kind.key), f"{self.run_dir}/{run.name}"] for run in self.runs]

    def table_files(self) -> dict[str, str]:
        return {role: f"{self.root}/{name}" for role, name in self.kind.tables.items()}
