"""Every file a comment names exists in the repository: comments and docstrings of the Python
code, comments of the Bicep templates and shell scripts. A path with a folder must be a file
of the repository (from the root, from the commenting file's folder or one above it, or the
tail of a tracked path); a Markdown name must resolve as a path (``docs/sync-api.md``, never the bare
file name), since the project's documents live under ``docs/``."""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"(?<![\w./:$-])((?:[\w-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:py|md|bicep|bicepparam|json|sh|toml|yaml))(?![\w.-])")


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def comments(path: str, text: str) -> list[tuple[int, str]]:
    """(line, text) of each comment and docstring-style string of a Python, Bicep or shell file."""
    if path.endswith(".py"):
        out = []
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.string.lstrip("rbuRBU").startswith(('"""', "'''"))):
                out.append((tok.start[0], tok.string))
        return out
    marker = "//" if path.endswith(".bicep") else "#"
    return [(i, line.split(marker, 1)[1]) for i, line in enumerate(text.splitlines(), 1) if marker in line]


def resolves(path: str, name: str, files: list[str]) -> bool:
    if any(part.isupper() for part in PurePosixPath(name).parts[:-1]):
        return True  # a placeholder folder such as OUT_DIR/
    here = (ROOT / path).parent
    if any((base / name).is_file() for base in (ROOT, here, *here.parents) if ROOT in (base, *base.parents)):
        return True
    if name.endswith(".md"):
        return False
    if "/" in name:
        return any(f.endswith("/" + name) for f in files)
    return any(PurePosixPath(f).name == name for f in files)


def unresolved(path: str, text: str, files: list[str]) -> list[str]:
    return [f"{path}:{line}: {m.group(1)}" for line, body in comments(path, text) for m in NAME.finditer(body)
            if not resolves(path, m.group(1), files)]


def test_the_scanner_flags_a_name_that_resolves_nowhere():
    files = tracked()
    text = '"""Cites sync-api.md and docs/sync-api.md."""\n# see shared/nowhere.py and shared/engine.py\n'
    assert unresolved("shared/example.py", text, files) == ["shared/example.py:1: sync-api.md", "shared/example.py:2: shared/nowhere.py"]
    assert unresolved("infra/app/x.bicep", "// from main.bicep and app/storage.bicep; see lost.bicep\n", files) == [
        "infra/app/x.bicep:1: lost.bicep"]


def test_every_file_a_comment_names_exists():
    files = tracked()
    missing = []
    for path in files:
        if path.endswith((".py", ".bicep", ".sh")) and (ROOT / path).is_file():
            missing += unresolved(path, (ROOT / path).read_text(encoding="utf-8"), files)
    assert missing == []
