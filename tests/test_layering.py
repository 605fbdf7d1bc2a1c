"""The package's layering (docs/design.md): data flows one way, and no module imports a later
stage, the trainer, the experiments or the command line. Every ``import`` counts, those
inside functions too, read from the source with ``ast``."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Stages in import order: a module may import its own stage and earlier ones. Evaluation
# precedes training because training evaluates periodically (training.periodic_eval); the
# evaluation code itself never needs the trainer.
STAGES = [
    (
        "base",
        [
            "clip_ping.errors",
            "clip_ping.io",
            "clip_ping.distributed",
            "clip_ping.flags",
            "clip_ping.tokenizer",
            "clip_ping.workers",
        ],
    ),
    ("data", ["clip_ping.data"]),
    ("teachers", ["clip_ping.efficientnet_fold", "clip_ping.teachers"]),
    ("bank", ["clip_ping.bank"]),
    (
        "student",
        [
            "clip_ping.models",
            "clip_ping.losses",
            "clip_ping.memory",
            "clip_ping.active",
            "clip_ping.guidance",
            "clip_ping",
        ],
    ),
    ("evaluation", ["clip_ping.evaluation"]),
    ("training", ["clip_ping.training"]),
    ("explore", ["clip_ping.explore"]),
    ("experiments", ["clip_ping.experiments"]),
    ("cli", ["clip_ping.cli"]),
]
# Only these may import the training loop, the experiments or the command line.
TOP = {
    "trainer": "clip_ping.training.train",
    "experiments": "clip_ping.experiments",
    "cli": "clip_ping.cli",
}
MAY_IMPORT_TOP = {
    "clip_ping.training.train": ("clip_ping.experiments", "clip_ping.cli"),
    "clip_ping.experiments": ("clip_ping.experiments", "clip_ping.cli"),
    "clip_ping.cli": ("clip_ping.cli",),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, submodules: bool = False) -> set[str]:
    """Every clip_ping module ``path`` imports (``from . import x`` → the package; with
    ``submodules`` also ``x`` where that is a module of the package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            if submodules:
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    found = {t for t in found if t == "clip_ping" or t.startswith("clip_ping.")}
    return {t for t in found if t in MODULES} if submodules else found


def within(module: str, prefix: str) -> bool:
    return module == prefix or (prefix != "clip_ping" and module.startswith(prefix + "."))


def stage_of(module: str) -> int:
    """Index of the stage of ``module`` (the longest matching prefix wins)."""
    best = (-1, -1)
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if within(module, prefix) and len(prefix) > best[1]:
                best = (index, len(prefix))
    if best[0] < 0:
        raise AssertionError(f"{module} belongs to no stage: add it to STAGES in {__file__}")
    return best[0]


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_later_stage(module):
    stage = stage_of(module)
    later = [t for t in imports(MODULES[module]) if stage_of(t) > stage]
    assert not later, f"{module} ({STAGES[stage][0]}) imports later stages: {later}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_the_library_never_imports_the_trainer_experiments_or_cli(module):
    for what, top in TOP.items():
        allowed = MAY_IMPORT_TOP[top]
        if any(within(module, prefix) for prefix in allowed):
            continue
        hits = [t for t in imports(MODULES[module]) if within(t, top)]
        assert not hits, f"{module} imports the {what} ({hits})"


def test_the_checks_catch_a_backward_import(tmp_path):
    """The parser resolves relative imports, lazy ones included, to the module they name."""
    package = tmp_path / "clip_ping" / "bank"
    package.mkdir(parents=True)
    source = package / "store.py"
    source.write_text("def f():\n    from ..training.train import train\n    from . import mine\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        found = imports(source)
    finally:
        SRC = saved
    assert found == {"clip_ping.training.train", "clip_ping.bank"}
    assert stage_of("clip_ping.training.train") > stage_of("clip_ping.bank.store")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a cycle (the strongly
    connected components of ``graph`` with more than one module), each sorted."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_no_two_modules_import_each_other():
    """Every import counts, those under ``TYPE_CHECKING`` and inside functions too, and
    ``from . import x`` imports both the package and its module ``x``."""
    graph = {module: imports(path, submodules=True) - {module} for module, path in MODULES.items()}
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_cycles_through_type_checking(tmp_path):
    package = tmp_path / "clip_ping" / "experiments"
    package.mkdir(parents=True)
    (package / "runs.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .demo import DemoData\n"
    )
    (package / "demo.py").write_text("def run():\n    from . import runs\n")
    global SRC, MODULES
    saved = SRC, MODULES
    SRC = tmp_path
    MODULES = {module_name(p): p for p in sorted(tmp_path.rglob("*.py"))}
    try:
        graph = {m: imports(p, submodules=True) - {m} for m, p in MODULES.items()}
    finally:
        SRC, MODULES = saved
    assert graph["clip_ping.experiments.demo"] == {"clip_ping.experiments.runs"}
    assert import_cycles(graph) == [["clip_ping.experiments.demo", "clip_ping.experiments.runs"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
