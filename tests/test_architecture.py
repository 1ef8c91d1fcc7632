"""The house rules, checked by reading the source: the packages are floors and imports only point down, no
module reaches into another's private names, modules and functions stay small, docs/architecture.md names
every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lora_merge"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# Modules over the line limit, each with its reason. Keep this list short; split a module rather than grow it.
LONG_MODULES: dict[str, str] = {}
# Functions over the line limit, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}

# The floors, bottom first: a module may import its own floor and the floors below it, never one above.
# The flow (data → train → pack → τ → ω → plan → write → eval) reads left to right in docs/architecture.md;
# this is the order of what each floor needs: a pack's manifest bounds ω (rules), training writes packs,
# a sweep folds. The studies sit on top (miniature < study < demo), then the command line.
FLOORS = ["core", "io", "rules", "pack", "pico", "train", "fold", "walkthrough", "evaluate", "skilldata",
          "miniature", "study", "demo", "commands", "cli"]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (``lora_merge.fold.plan``)."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


MODULES = modules()


def imported(node: ast.AST, here: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in ``node``'s tree: module-level and inside functions alike."""
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found += [(a.name, []) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative: resolve against this module's package
                pkg = here.split(".") if is_package else here.split(".")[:-1]
                pkg = pkg[: len(pkg) - (n.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            found.append((base, [a.name for a in n.names]))
    return found


def edges(mods: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    """Module → the package's modules it imports (a `from pkg import mod` counts as importing pkg.mod)."""
    top = next(iter(mods)).split(".")[0]
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, names in imported(tree, mod, path.name == "__init__.py"):
            if target.split(".")[0] != top:
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            for t in subs or ([target] if target in mods else []):
                if t != mod:
                    graph[mod].add(t)
    return graph


def floor(mod: str) -> int:
    """The floor of a module: its first name under the package. The package's own ``__init__`` (the version and
    the error type, re-exported for users) lives on the ground floor with ``core``."""
    parts = mod.split(".")
    return 0 if len(parts) == 1 else FLOORS.index(parts[1])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points to a floor above the importing module's, as 'a (floor) imports b (floor)'."""
    def name(m: str) -> str:
        return FLOORS[floor(m)]

    return [f"{m} ({name(m)}) imports {t} ({name(t)})"
            for m in sorted(graph) for t in sorted(graph[m]) if floor(t) > floor(m)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_walker_sees_deferred_imports_and_cycles():
    tree = ast.parse("def f():\n    from lora_merge.fold.write import fold\nimport lora_merge.fold.plan\n")
    assert sorted(t for t, _ in imported(tree, "lora_merge.x", False)) == ["lora_merge.fold.plan", "lora_merge.fold.write"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.fixture
def package_with_an_upward_import(tmp_path):
    """A small copy of the house: core, pack, fold and the study on top, where pack reaches up into fold inside a
    function (the kind of import that hides best) and fold imports the study's config at module level."""
    files = {
        "__init__.py": "",
        "core/__init__.py": "", "core/errors.py": "class LoraMergeError(Exception): ...\n",
        "pack/__init__.py": "",
        "pack/skillpack.py": "from lora_merge.core.errors import LoraMergeError\n\n\ndef load():\n"
                             "    from lora_merge.fold import plan\n    return plan\n",
        "fold/__init__.py": "", "fold/plan.py": "from lora_merge.pack import skillpack\n",
        "fold/write.py": "import lora_merge.study.config\nfrom lora_merge.fold.plan import *\n",
        "study/__init__.py": "", "study/config.py": "from lora_merge.fold import write\n",
    }
    for rel, text in files.items():
        (tmp_path / "lora_merge" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lora_merge" / rel).write_text(text)
    return tmp_path / "lora_merge"


def test_the_layering_check_fails_on_an_upward_import(package_with_an_upward_import):
    graph = edges(modules(package_with_an_upward_import))
    assert upward_imports(graph) == [
        "lora_merge.fold.write (fold) imports lora_merge.study.config (study)",
        "lora_merge.pack.skillpack (pack) imports lora_merge.fold.plan (fold)",
    ]


def test_every_package_has_a_floor():
    tops = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
            if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert tops == set(FLOORS), f"floors without a package: {set(FLOORS) - tops}; packages without a floor: {tops - set(FLOORS)}"
    assert len([t for t in tops if (PACKAGE / f"{t}.py").is_file()]) <= 10, "more than 10 modules at the top level"


def test_imports_only_point_down():
    assert not (up := upward_imports(edges())), "imports that run up the floors:\n" + "\n".join(up)


def test_no_import_cycle():
    graph = edges()
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_no_module_imports_another_modules_private_names():
    offences = []
    for mod, path in MODULES.items():
        for target, names in imported(ast.parse(path.read_text(encoding="utf-8")), mod, path.name == "__init__.py"):
            if target.startswith("lora_merge") and target != mod:
                offences += [f"{mod} imports {target}.{n}" for n in names
                             if n.startswith("_") and not n.startswith("__")]
    assert not offences, offences


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_and_function_sizes(mod):
    path = MODULES[mod]
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    if mod not in LONG_MODULES:
        assert lines <= MAX_MODULE_LINES, f"{mod} has {lines} lines (> {MAX_MODULE_LINES}): split it by idea"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = node.end_lineno - node.lineno + 1
            key = f"{mod}.{node.name}"
            if key not in LONG_FUNCTIONS:
                assert size <= MAX_FUNCTION_LINES, f"{key} has {size} lines (> {MAX_FUNCTION_LINES})"


def doc_sections(doc: str) -> dict[str, str]:
    """docs/architecture.md's module tables by heading: '### `core/` …' → that section's text."""
    parts = re.split(r"^### `([a-z_]+)/?`", doc, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def test_architecture_doc_names_every_module_and_links_only_inside_the_repo():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    sections = doc_sections(doc)
    missing = []
    for mod, path in MODULES.items():
        parts = mod.split(".")[1:]
        if not parts or (path.name == "__init__.py" and len(parts) == 1 and parts[0] != "skilldata"):
            continue
        section = "lora_merge" if len(parts) == 1 else parts[0]
        entry = "__init__.py" if path.name == "__init__.py" else f"{parts[-1]}.py"
        if f"`{entry}`" not in sections.get(section, ""):
            missing.append(f"{mod} (`{entry}` under ### `{section}/`)")
    assert not missing, "docs/architecture.md does not name:\n" + "\n".join(missing)
    for name in sections:
        assert name == "lora_merge" or (PACKAGE / name).is_dir(), f"docs/architecture.md names a package that is gone: {name}/"
    assert "../" not in doc, "docs/architecture.md links outside the repository"


def test_test_files_are_named_by_the_floor_they_test():
    """tests/test_<floor>[_<topic>].py, so the tests of a floor sort together (benchmarks: the benchmark scripts)."""
    floors = (*FLOORS, "benchmarks")
    strays = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if p.name != "test_architecture.py"
              and not any(p.stem == f"test_{f}" or p.stem.startswith(f"test_{f}_") for f in floors)]
    assert not strays, f"name these test_<floor>_…py, floors {floors}: {strays}"
