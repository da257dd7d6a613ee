"""Layering rules from DESIGN.md that code review alone would miss."""

from __future__ import annotations

import subprocess
import sys


def test_combiner_core_never_imports_ray() -> None:
    code = (
        "import sys, combiner_core, combiner_core.generation, combiner_core.checkpoint\n"
        "leaked = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(','.join(leaked))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"combiner_core pulled in Ray modules: {out.stdout.strip()}"


def test_public_surface_is_declared() -> None:
    import combiner_core
    import pipelines

    for package in (combiner_core, pipelines):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"{package.__name__}.__all__ names missing attributes: {missing}"


def _heavy_imports(runs: list[tuple[str, list[str]]]) -> list[str]:
    """Which of torch, transformers and ray one process has imported after running these
    job scripts with these arguments (each must exit 0)."""
    code = (
        "import runpy, sys\n"
        f"for script, args in {runs!r}:\n"
        "    sys.argv = [script, *args]\n"
        "    try:\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (script, args, exc.code)\n"
        "print('HEAVY=' + ','.join(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY="), out.stdout[-2000:]
    return [m for m in last[len("HEAVY="):].split(",") if m]


def test_help_and_validate_only_import_no_torch_or_transformers() -> None:
    """--help and --validate-only answer at once: torch and transformers (seconds to import)
    load only when a job runs. --help loads no Ray either; --validate-only may (0.5 s): its
    CPU check counts this machine's CPUs as a private Ray would (ray._private.utils'
    get_num_cpus, cgroup limits included), so the two never disagree."""
    helps = [("jobs/caption_dataset.py", ["--help"]), ("jobs/summarize_corpus.py", ["--help"]),
             ("jobs/finetune.py", ["--help"])]
    assert _heavy_imports(helps) == []
    assert _heavy_imports([("jobs/caption_dataset.py", ["--validate-only"])]) in ([], ["ray"])


def _module_imports(package_dirs: list[str]) -> dict[str, set[str]]:
    """Each module's imports of modules of these packages, wherever they are written
    (inside functions too; not under TYPE_CHECKING, which never runs)."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    modules = {}
    for package in package_dirs:
        for path in (repo / package).rglob("*.py"):
            rel = path.relative_to(repo).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        edges = set()
        tree = ast.parse(path.read_text())
        skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import x` names a submodule
                    if f"{target}.{alias.name}" in modules:
                        edges.add(f"{target}.{alias.name}")
                if target in modules:
                    edges.add(target)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
        graph[name] = edges - {name}
    return graph


def test_no_import_cycles() -> None:
    """No module imports, through others, a module that imports it; an import inside a
    function counts too (those are for start-up time, not to hide a cycle)."""
    graph = _module_imports(["combiner_core", "pipelines"])
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_public_faces_are_declared() -> None:
    """combiner_core's face is about 25 names a user calls; storage is public to pipelines."""
    import combiner_core
    import combiner_core.storage
    import pipelines.finetune
    import pipelines.generation
    import pipelines.generation.output
    import pipelines.reading
    from combiner_core import engine
    from combiner_core.engine import decoding, model

    assert 20 <= len(combiner_core.__all__) <= 30
    for module in (combiner_core.storage, engine, decoding, model, pipelines, pipelines.reading,
                   pipelines.generation, pipelines.generation.output, pipelines.finetune):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ names missing attributes: {missing}"


def test_tests_import_library_code_and_support_modules_only() -> None:
    """A test module imports no other test module (shared helpers live in tests/support/)
    and no entry script under jobs/ (what tests need from there is library code)."""
    graph = _module_imports(["tests", "jobs"])
    wrong = {name: sorted(t for t in targets if (t.startswith("tests.") and not t.startswith("tests.support"))
                          or t.startswith("jobs"))
             for name, targets in graph.items() if name.startswith("tests.")}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"tests importing other tests or job scripts: {wrong}"
    support = {name: sorted(t for t in targets if not t.startswith("tests.support"))
               for name, targets in graph.items() if name.startswith("tests.support")}
    assert not any(support.values()), f"support modules importing tests: {support}"
