"""Build the Function app's deployment package the way the deploy paths do: the project
directory minus what ``.funcignore`` excludes (gitignore patterns, as Azure/functions-action
with ``respect-funcignore: true`` and ``azd deploy`` apply them).

    .venv/bin/python scripts/package.py [OUT.zip]      default: .local/function-app.zip

The zip is what the portal path deploys after the "Deploy to Azure" button
(docs/deployment.md): ``az functionapp deployment source config-zip --build-remote true``;
the remote build installs requirements.txt, the lock. Prints the number of files.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pathspec

ROOT = Path(__file__).resolve().parent.parent


def funcignore(root: Path) -> pathspec.PathSpec:
    """The patterns of ``root/.funcignore`` (an absent file ignores nothing)."""
    path = root / ".funcignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return pathspec.GitIgnoreSpec.from_lines(lines)


def package_files(root: Path = ROOT) -> list[str]:
    """Relative POSIX paths of every file the package holds, sorted. Ignored directories are
    not descended into (a .venv is never walked)."""
    spec = funcignore(root)
    out: list[str] = []

    def walk(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            rel = entry.relative_to(root).as_posix()
            if entry.is_dir() and not entry.is_symlink():
                if not spec.match_file(rel + "/"):
                    walk(entry)
            elif entry.is_file() and not spec.match_file(rel):
                out.append(rel)

    walk(root)
    return out


def build(out: Path, root: Path = ROOT) -> list[str]:
    files = package_files(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            zf.write(root / rel, rel)
    return files


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".local" / "function-app.zip"
    names = build(target)
    print(f"package: {len(names)} files in {target}")
