"""What drew a figure: a small JSON record beside the figures, so that a test notices a stale one.

A figure command (``timm-sage show``) writes ``<command>.json`` beside its PNGs: its arguments, the
digest of its input files, the digest of the code that computes and draws the figures, and each PNG's
SHA-256. ``tests/test_figures.py`` recomputes the code digest from today's sources: when it differs, the
committed figures may no longer be what the command draws, and the test names the command to rerun.

The code is every ``timm_sage`` module the command's module imports, followed statically (``import`` and
``from ... import`` anywhere in a file, so imports inside functions count), each digested as its syntax
tree without docstrings: editing a comment or a docstring leaves the digest alone, a change of code does
not.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from timm_sage._atomic import atomic_write_text

__all__ = ["code_digest", "code_files", "file_digest", "read_record", "write_record"]

_PACKAGE = Path(__file__).resolve().parents[1]
ROOT = _PACKAGE.parent
# Modules that only write files (the figures are the same whatever they do): not digested.
_NOT_DRAWING = frozenset({"timm_sage", "timm_sage._atomic", "timm_sage.tools.provenance"})


def _module_file(name: str) -> Path | None:
    """The source file of ``timm_sage`` module ``name`` (a package's ``__init__.py``), or None."""
    parts = name.split(".")
    if parts[0] != "timm_sage":
        return None
    base = _PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """The ``timm_sage`` modules ``path`` imports (``from timm_sage import x``: the submodule x if it is
    one, else the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _module_file(sub) is not None else node.module)
    return {name for name in found if name.split(".")[0] == "timm_sage"}


def code_files(entry: str) -> list[Path]:
    """Every ``timm_sage`` source file that module ``entry`` reaches through its imports, ``entry``'s
    own included, sorted; the package's lazy ``__init__.py`` and the file-writing helpers are left out."""
    seen: dict[str, Path] = {}
    pending = [entry]
    while pending:
        name = pending.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        pending.extend(sorted(_imports(path)))
    return sorted(path for name, path in seen.items() if name not in _NOT_DRAWING)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _canonical(node: Any) -> str:
    """A syntax tree as text that is the same on Python 3.10 to 3.13: ``ast.dump`` is not (3.12 adds
    ``type_params``, 3.13 leaves out empty fields), so empty fields are left out here on every version."""
    if isinstance(node, ast.AST):
        fields = [
            f"{name}={_canonical(value)}"
            for name in node._fields
            if (value := getattr(node, name, None)) is not None and value != []
        ]
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return "[" + ", ".join(_canonical(item) for item in node) + "]"
    return repr(node)


def code_digest(files: Iterable[Path], root: Path = ROOT) -> str:
    """SHA-256 over ``files`` (paths relative to ``root`` and their syntax trees without docstrings or
    comments, the same on every Python from 3.10), hex."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
        digest.update(str(path.resolve().relative_to(root.resolve())).encode() + b"\0")
        digest.update(_canonical(tree).encode() + b"\0")
    return digest.hexdigest()


def file_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` (names and contents, sorted by name), hex."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "timm", "numpy", "matplotlib"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            module = importlib.import_module(name)
            versions[name] = str(getattr(module, "__version__", "?"))
    return versions


def write_record(
    path: str | Path,
    *,
    command: str,
    entry: str,
    arguments: Mapping[str, Any],
    inputs: Iterable[Path],
    figures: Iterable[Path],
) -> Path:
    """Write the record of one run of a figure command to ``path`` (JSON, atomically); returns it.

    Args:
        command: the command line that drew the figures, as a user types it.
        entry: the module of the command (``timm_sage.tools.show``): its imports give the code digested.
        arguments: every argument of the drawing function (JSON values).
        inputs: the data files read. figures: the PNGs written, beside ``path``.
    """
    files = code_files(entry)
    record = {
        "command": command,
        "entry": entry,
        "arguments": dict(arguments),
        "inputs_digest": file_digest(inputs),
        "code_digest": code_digest(files),
        "code_files": [str(p.resolve().relative_to(ROOT)) for p in files],
        "figures": {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in figures},
        "versions": _versions(),
    }
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def read_record(path: str | Path) -> dict[str, Any]:
    """A record written by :func:`write_record`."""
    return json.loads(Path(path).read_text())
