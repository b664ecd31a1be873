"""Every file a comment names exists in the repository: comments and docstrings of the Python
code, comments of the Bicep templates, shell scripts and YAML files, and in the Markdown
documents (README, docs/) every link target and every backticked repository path. A path with a
folder must be a file of the repository (from the root, from the commenting file's folder or one
above it, or the tail of a tracked path); a path that starts with ``./`` or ``../`` must resolve
from the commenting file's folder; a Markdown name must resolve as a path (``docs/sync-api.md``,
never the bare file name), since the project's documents live under ``docs/``. The specification
folder beside the repository is named nowhere: users don't have it.

A comment that cites a section of ``docs/sync-rules.md`` or ``docs/sync-api.md`` by its quoted
title (``docs/sync-rules.md, "The deletion guard"``) names a heading of that document."""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"(?<![\w./:$-])((?:\.\.?/)*(?:\.?[\w-]+/)*\.?[\w-]+(?:\.[\w-]+)*\.(?:py|md|bicep|bicepparam|json|sh|toml|yaml|yml))"
                  r"(?![\w.-])")
# The private specification folder, one level above the repository (built in two parts so that
# this file does not name it).
FORBIDDEN = ".." + "/shared"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BACKTICKED = re.compile(r"`([^`\n]+)`")
# A quoted section title after the document's name, as in ``docs/sync-rules.md, "The deletion guard"``
# (or with a colon, or in parentheses); the title may run onto the next comment line.
SECTION = re.compile(r"(?:docs/)?(sync-rules|sync-api)\.md`?[,:]?\s*\(?[\"\u201c]([^\"\u201d]{1,160})[\"\u201d]")
SCANNED = (".py", ".bicep", ".sh", ".yml", ".yaml", ".md")
# Citations of a section title that is not a heading, in files being edited in other branches
# (issue 10 review): the lead renames them at merge, then these entries go.
#   shared/reading.py:6 and shared/model/directory.py:172: "Reading the directory" → "Reading Microsoft Graph"
#   shared/actions/reads.py:99: "Exchange Online" → "The Exchange Online source"
#   shared/actions/update.py:6: "Deletion guard" → "The deletion guard"
#   shared/model/directory.py:582: "From directory objects to the three datasets" → "The three datasets"
#   shared/storage/state.py:51: "An interrupted run is repaired by the next one" → "The recovery guarantee"
OTHER_BRANCHES = {"shared/reading.py:6", "shared/model/directory.py:172",
                  "shared/model/directory.py:582", "shared/storage/state.py:51"}
# Folders a tracked script writes (not in the repository): infra/scripts/build-arm.sh's default output.
GENERATED = ("infra/.build/",)


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
    if path.endswith(".md"):
        return [(1, text)]  # a document is all prose
    marker = "//" if path.endswith(".bicep") else "#"
    return [(i, line.split(marker, 1)[1]) for i, line in enumerate(text.splitlines(), 1) if marker in line]


def blocks(path: str, text: str) -> list[tuple[int, str]]:
    """``comments`` with the comments of consecutive lines joined into one block (the comment
    markers of the later lines dropped), so a title quoted across two comment lines reads whole."""
    out: list[tuple[int, str]] = []
    end = -1
    for line, body in comments(path, text):
        one_line = "\n" not in body
        if out and one_line and line == end + 1:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + body.lstrip("#/ "))
        else:
            out.append((line, body))
        end = line + body.count("\n")
    return out


def resolves(path: str, name: str, files: list[str]) -> bool:
    if any(part.isupper() for part in PurePosixPath(name).parts[:-1]):
        return True  # a placeholder folder such as OUT_DIR/
    if name.startswith(GENERATED):
        return True
    here = (ROOT / path).parent
    if name.startswith(("./", "../")):
        target = (here / name).resolve()
        return ROOT in target.parents and target.exists()
    if any((base / name).is_file() for base in (ROOT, here, *here.parents) if ROOT in (base, *base.parents)):
        return True
    if name.endswith(".md"):
        return False
    if "/" in name:
        return any(f.endswith("/" + name) for f in files)
    return any(PurePosixPath(f).name == name for f in files)


def named(path: str, text: str) -> list[tuple[int, str, bool]]:
    """(line, path, whether it is a link) of each file a comment names; in a Markdown document,
    each link target (without its ``#fragment``; web and mail links left out) and each
    backticked path with a folder."""
    if not path.endswith(".md"):
        return [(line + body.count("\n", 0, m.start()), m.group(1), False) for line, body in comments(path, text)
                for m in NAME.finditer(body)]
    out = []
    for m in LINK.finditer(text):
        target = m.group(1).split("#", 1)[0]
        if target and not re.match(r"[a-z][a-z+.-]*:", target):
            out.append((text.count("\n", 0, m.start()) + 1, target, True))
    for m in BACKTICKED.finditer(text):
        out += [(text.count("\n", 0, m.start()) + 1, n.group(1), False) for n in NAME.finditer(m.group(1)) if "/" in n.group(1)]
    return out


def link_resolves(path: str, target: str) -> bool:
    """A Markdown link opens from the document's folder (``/``: from the repository's root)."""
    base = ROOT if target.startswith("/") else (ROOT / path).parent
    found = (base / target.lstrip("/")).resolve()
    return (found == ROOT or ROOT in found.parents) and found.exists()


def unresolved(path: str, text: str, files: list[str]) -> list[str]:
    out = [f"{path}:{line}: {name}" for line, name, link in named(path, text)
           if not (link_resolves(path, name) if link else resolves(path, name, files))]
    return out + [f"{path}:{line + body.count(chr(10), 0, body.index(FORBIDDEN))}: {FORBIDDEN} (the private specification folder)"
                  for line, body in comments(path, text) if FORBIDDEN in body]


def headings(document: str) -> set[str]:
    """The headings of ``docs/<document>.md``, normalised as ``title_key`` does."""
    text = (ROOT / "docs" / f"{document}.md").read_text(encoding="utf-8")
    return {title_key(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def title_key(title: str) -> str:
    """A section title compared without case, backticks, spacing or a leading section number."""
    title = re.sub(r"\s+", " ", title.replace("`", "")).strip().lower()
    return re.sub(r"^§?\d+(\.\d+)*\.? ", "", title)


def uncited(path: str, text: str) -> list[str]:
    """Each quoted section title in ``path``'s comments that is not a heading of the document it cites."""
    out = []
    for line, body in blocks(path, text):
        for m in SECTION.finditer(body):
            where = f"{path}:{line + body.count(chr(10), 0, m.start())}"
            if where not in OTHER_BRANCHES and title_key(m.group(2)) not in headings(m.group(1)):
                title = " ".join(m.group(2).split())
                out.append(f'{where}: {m.group(1)}.md "{title}"')
    return out


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
        if path.endswith(SCANNED) and (ROOT / path).is_file():
            missing += unresolved(path, (ROOT / path).read_text(encoding="utf-8"), files)
    assert missing == []


def test_the_scanner_reads_markdown_links_backticks_dot_paths_and_the_forbidden_folder():
    files = tracked()
    doc = ("See [the rules](sync-rules.md#the-deletion-guard), [gone](lost.md), [web](https://example.com/x.md),\n"
           "`shared/engine.py`, `shared/nowhere.py`, `state.db` and `../README.md`; [root](../README.md),\n"
           "[from the root](/shared/engine.py), [not from docs/](shared/engine.py).\n")
    assert unresolved("docs/example.md", doc, files) == ["docs/example.md:1: lost.md", "docs/example.md:3: shared/engine.py",
                                                         "docs/example.md:2: shared/nowhere.py"]
    assert unresolved("shared/example.py", "# see ../README.md, ./engine.py and ./gone.py\n", files) == [
        "shared/example.py:1: ./gone.py"]
    assert unresolved(".github/workflows/x.yml", "# runs scripts/test.sh and scripts/nothing.sh\n", files) == [
        ".github/workflows/x.yml:1: scripts/nothing.sh"]
    spec = "# from " + FORBIDDEN + "/sync-rules.md\n"
    assert any(FORBIDDEN in m for m in unresolved("shared/example.py", spec, files))


def test_the_section_check_flags_a_title_that_is_no_heading():
    text = ('"""Rules (docs/sync-rules.md, "The deletion guard"; docs/sync-api.md §8, "6. Idempotency").\n\n'
            'Elsewhere (docs/sync-rules.md, "Reading the\n    directory")."""\n'
            '# a comment (docs/sync-api.md: "Replace: staged,\n# then atomic") and (sync-rules.md "No such part")\n')
    assert uncited("shared/example.py", text) == ['shared/example.py:3: sync-rules.md "Reading the directory"',
                                                   'shared/example.py:6: sync-rules.md "No such part"']


def test_every_quoted_section_title_is_a_heading():
    bad = []
    for path in tracked():
        if path.endswith(SCANNED) and (ROOT / path).is_file():
            bad += uncited(path, (ROOT / path).read_text(encoding="utf-8"))
    assert bad == []
