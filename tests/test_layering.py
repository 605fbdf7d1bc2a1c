"""The library never imports the experiments or the CLI (DESIGN.md §3): only cli.py may."""

import ast
from pathlib import Path

import clip_ping

PACKAGE = Path(clip_ping.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports, relative imports resolved."""
    # The package a relative import starts from: clip_ping.data for data/x.py and data/__init__.py.
    package = ["clip_ping", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_cli_imports_the_experiments_and_nothing_imports_the_cli():
    library = [
        p
        for p in PACKAGE.rglob("*.py")
        if "experiments" not in p.relative_to(PACKAGE).parts and p.name != "cli.py"
    ]
    assert len(library) > 20 and (PACKAGE / "experiments" / "demo.py").is_file()
    for path in library:
        for name in imported_modules(path):
            assert not name.startswith("clip_ping.experiments"), (path, name)
            assert name != "clip_ping.cli", (path, name)
    # The check sees relative imports: cli.py's are found.
    assert "clip_ping.experiments.demo" in imported_modules(PACKAGE / "cli.py")
    assert "clip_ping.data.transforms" in imported_modules(
        PACKAGE / "experiments" / "demo_corpus.py"
    )
