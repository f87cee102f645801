"""The package's layout: no import cycle, layers that import only downwards, no loose modules, and
the schema's enums equal to the registries they name. Fast: source read with ``ast``, no process."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "datamove"

# Bottom to top: a module may import its own layer and those below, never one above. An entry names a
# package or a module (dotted, under datamove); a module takes the layer of its most specific entry.
# An entry that does not exist (yet, or any more) is no error.
LAYERS: list[tuple[str, list[str]]] = [
    ("plug-ins: names a config gives from outside the package",
     ["plugins"]),
    ("numerics, no other datamove import than plug-ins",
     ["__init__", "solvers", "models", "reservoir", "sampling.samplers"]),
    ("problems and their samples", ["problems"]),
    ("config", ["config"]),
    ("the study folder: lock, heartbeat, receipts, status; adaptive proposals", ["run", "sampling"]),
    ("streams", ["streaming"]),
    ("stored member files, the offline dataset", ["data"]),
    ("the trainer and the members' jobs", ["training", "ensemble"]),
    ("evaluation", ["evaluation"]),
    ("studies of studies", ["studies"]),
    ("entry points", ["cli", "__main__"]),
]

LOOSE = {"__init__", "__main__", "config", "cli"}  # the only modules at the top of datamove/


def module_names() -> dict[str, Path]:
    """Dotted name (``datamove.run.gate``; a package: its ``__init__``'s, ``datamove.run``) -> file."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, str]]:
    """Every datamove module that ``name`` imports, anywhere in it (inside functions too), as
    (module, line, the import statement). ``from a import b`` imports module ``a.b`` when there is
    one, else ``a``; a name that is no module counts as the nearest module above it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def add(target: str, node: ast.AST) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name and (target, node.lineno, ast.unparse(node)) not in found:
            found.append((target, node.lineno, ast.unparse(node)))

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "datamove":
                    add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "datamove":
                continue
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, str]]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_read_whole(tmp_path):
    """The graph sees imports inside functions, submodules imported by ``from``, and relative ones."""
    probe = tmp_path / "probe.py"  # read as if it were datamove/run/probe.py
    probe.write_text(
        "from datamove.sampling import proposals\n"
        "from datamove.run.heartbeat import read_heartbeat\n"
        "def f():\n    from datamove.run.lock import StudyLock\n    import datamove.config as c\n"
        "from .signals import Interrupted\n"
    )
    targets = {t for t, _, _ in imports_of("datamove.run.probe", probe, module_names())}
    assert targets == {"datamove.sampling.proposals", "datamove.run.heartbeat", "datamove.run.lock",
                       "datamove.config", "datamove.run.signals"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle(graph):
    """No module imports itself through others, counting imports inside functions. Importing a module
    also runs its packages' ``__init__``: an edge to each (but those of the importer's own packages,
    already under way), so that a package that imports its modules cannot close a cycle unseen."""
    edges: dict[str, set[str]] = {}
    for name, imported in graph.items():
        targets = edges.setdefault(name, set())
        for target, _, _ in imported:
            targets.add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if not (name == parent or name.startswith(parent + ".")) and parent in graph:
                    targets.add(parent)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer_of(name: str) -> int | None:
    """The layer of module ``datamove.<...>``: its most specific entry in LAYERS, or None."""
    rel = name.removeprefix("datamove").removeprefix(".") or "__init__"
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if (rel == entry or rel.startswith(entry + ".")) and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def test_every_module_has_a_layer(graph):
    missing = sorted(name for name in graph if layer_of(name) is None)
    assert not missing, f"modules in no layer of LAYERS (tests/test_layout.py): {missing}"


def test_layers_import_only_downwards(graph):
    """A module imports its own layer or those below: the lower layers never climb to a higher one."""
    wrong = []
    for name, imported in sorted(graph.items()):
        mine = layer_of(name)
        for target, line, statement in imported:
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(
                    f"{module_names()[name].relative_to(REPO)}:{line}: `{statement}`: layer "
                    f"'{LAYERS[mine][0]}' imports {target} of the higher layer '{LAYERS[theirs][0]}'"
                )
    assert not wrong, "imports that climb a layer:\n" + "\n".join(wrong)


def test_no_loose_modules_at_the_top():
    loose = {path.stem for path in PACKAGE.glob("*.py")} - LOOSE
    assert not loose, (f"modules loose at the top of datamove/ (put each in the subpackage of what it "
                       f"does): {sorted(loose)}")


# -- the schema's enums and the registries -----------------------------------------------------------

ADAPTIVE = "adaptive"  # a sampler that is no fixed sampler: members draw from the trainer's proposals


def schema_at(schema: dict, path: str):
    node = schema
    for key in path.split("."):
        node = node[int(key)] if key.isdigit() else node[key]
    return node


def enum_at(schema: dict, path: str) -> list:
    values = schema_at(schema, path)
    assert len(values) == len(set(values)), f"{path}: a name twice: {values}"
    return values


def test_schema_enums_equal_the_registries():
    from datamove.config import load_schema
    from datamove.models import MODELS
    from datamove.plugins import BUILTIN_MODELS
    from datamove.problems import PROBLEMS
    from datamove.problems.samples import KINDS
    from datamove.reservoir import ON_FULL, POLICIES
    from datamove.sampling.samplers import SAMPLERS

    schema = load_schema()
    p = "properties"
    built_in = f"{p}.solver.allOf.0.else.{p}.name"
    expected = {
        f"{built_in}.enum": PROBLEMS,
        f"{p}.reservoir.{p}.policy.enum": POLICIES,
        f"{p}.reservoir.{p}.on_full.enum": ON_FULL,
        f"{p}.trainer.{p}.sample.enum": KINDS,
        f"{p}.parameters.{p}.sampler.enum": [*SAMPLERS, ADAPTIVE],
        f"{p}.parameters.{p}.adaptive.{p}.base.enum": SAMPLERS,
        f"{p}.sampling_study.{p}.samplers.items.enum": [*SAMPLERS, ADAPTIVE],
        f"{p}.policy_study.{p}.policies.items.enum": POLICIES,
    }
    differ = [f"{path}: schema {sorted(enum_at(schema, path))}, code {sorted(names)}"
              for path, names in expected.items() if set(enum_at(schema, path)) != set(names)]
    assert not differ, "schema enums that differ from their registries:\n" + "\n".join(differ)
    # trainer.model has no enum (it takes plug-ins and import paths): the config checks the
    # built-in names without torch, from datamove.plugins.
    assert "enum" not in schema_at(schema, f"{p}.trainer.{p}.model") and tuple(MODELS) == BUILTIN_MODELS
    # The refusal of an unknown problem names the built-in ones too.
    hint = re.search(r"\(([^)]*)\)", schema_at(schema, built_in)["x-error"]).group(1)
    assert set(hint.split(", ")) == set(PROBLEMS), hint
    # Each built-in problem has its solver keys and parameter ranges in $defs.
    for name in PROBLEMS:
        key = name.replace("-", "_")
        assert {f"{key}_solver", f"{key}_ranges"} <= set(schema["$defs"]), name


def test_the_schemas_studies_are_the_registrys_kinds():
    """Every *_study section of the schema is a kind of datamove.studies.KINDS and back: a kind the
    schema lacks could not be configured, a section no kind runs would be ignored."""
    from datamove.studies import KINDS
    from datamove.studies.sweep import study_sections

    assert study_sections() == {kind.section for kind in KINDS.values()}
