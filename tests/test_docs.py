"""Every ```python block of README.md and docs/*.md runs, and every `timm-sage COMMAND` named exists.

Blocks of one file run in order in one fresh namespace, with ``HF_HUB_OFFLINE=1``, in a temporary
working directory that looks like a checkout: it holds symbolic links to the repository's top-level
entries (``docs/``, ``train_configs/``, ...), so ``docs/examples/x.py`` resolves as it does for a user in
the repository root, while files a block creates land in the temporary directory. ``TIMM_SAGE_REPO``
names the real root. A block opts out with the line ``<!-- skip-test -->`` right before its fence:
only for blocks that cannot run on CI (a GPU, a clone of timm's train.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from timm_sage.tools.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SKIP_MARK = "<!-- skip-test -->"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
# `timm-sage COMMAND` in shell blocks and inline code; `timm-sage-train` and `timm-sage --flag` don't match.
COMMAND = re.compile(r"(?<![\w-])timm-sage[ \t]+([a-z][\w-]*)")
NOT_LINKED = {"output", "runs", "build"}  # outputs of earlier runs stay out of the fake checkout


def code_blocks(text: str) -> list[tuple[str, int, str, bool]]:
    """(language, first line number, code, skipped) of each fenced block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        blocks.append((language.lower(), i + 2, "\n".join(body) + "\n", previous == SKIP_MARK))
        i = j + 1
    return blocks


def test_the_block_parser():
    text = "intro\n```python\nx = 1\n```\n<!-- skip-test -->\n```python\ny = 2\n```\n```bash\nls\n```\n"
    assert code_blocks(text) == [
        ("python", 3, "x = 1\n", False),
        ("python", 7, "y = 2\n", True),
        ("bash", 10, "ls\n", False),
    ]
    line = "timm-sage show -o x; timm-sage-train --mixup 1; pip install timm-sage[viz]; timm-sage --version"
    assert COMMAND.findall(line) == ["show"]
    doc = "Run `timm-sage train -c x.yaml`.\n```bash\nmake test  # installs timm-sage with extras\n"
    doc += "timm-sage bench\n```\n"
    assert named_commands(doc) == {"train", "bench"}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    blocks = [b for b in code_blocks(path.read_text()) if b[0] in ("python", "py", "python3")]
    runnable = [b for b in blocks if not b[3]]
    if not runnable:
        pytest.skip(f"{path.name} has no runnable python blocks")
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in NOT_LINKED:
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TIMM_SAGE_REPO", str(ROOT))
    namespace: dict = {"__name__": "__doc_test__"}
    for _, line, code, _ in runnable:
        try:
            exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(
                f"{path.relative_to(ROOT)}, the python block at line {line} failed: "
                f"{type(error).__name__}: {error}"
            ) from error


def named_commands(text: str) -> set[str]:
    """Subcommands named as `timm-sage NAME` in shell blocks (comments stripped) and inline code."""
    shell_blocks = [b[2] for b in code_blocks(text) if b[0] in ("bash", "sh", "shell", "console", "")]
    shell = [re.sub(r"(^|\s)#.*", "", line) for block in shell_blocks for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return {name for chunk in shell + inline for name in COMMAND.findall(chunk)}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_commands_exist(path):
    unknown = sorted(named_commands(path.read_text()) - set(COMMANDS))
    assert not unknown, f"{path.name} names timm-sage subcommands that do not exist: {unknown}"
