"""How the product ships: the deployment package of each deploy path holds the app and
nothing else (no test, emulator, benchmark, doc or infra file), the deploy workflow honours
.funcignore, pull requests run .ci/run, and the dependency tree is locked with hashes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import package  # noqa: E402  (scripts/package.py)

NEVER_SHIPPED = ("tests/", "devstack/", "bench/", "docs/", "infra/", "scripts/", ".github/", ".ci/",
                 ".venv/", ".local/", "node_modules/")
MUST_SHIP = ("function_app.py", "operator_endpoints.py", "host.json", "requirements.txt", "shared/engine.py", "shared/common/telemetry.py")


def shipping_problems(files: list[str]) -> list[str]:
    problems = [f"{f} is in the package" for f in files if f.startswith(NEVER_SHIPPED)]
    problems += [f"{f} is missing from the package" for f in MUST_SHIP if f not in files]
    return problems


def _workflow(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def _functions_action_step() -> dict:
    steps = [s for job in _workflow("deploy.yml")["jobs"].values() for s in job["steps"]]
    [step] = [s for s in steps if str(s.get("uses", "")).lower().startswith("azure/functions-action")]
    return step


def test_github_actions_deploy_honours_funcignore() -> None:
    step = _functions_action_step()
    assert step["with"]["respect-funcignore"] is True
    assert step["with"]["package"] == "."
    assert step["with"]["remote-build"] is True  # the remote build installs requirements.txt, the lock


def test_azd_deploys_the_project_directory_as_a_function() -> None:
    """azd packages a Functions service from its project folder and honours .funcignore."""
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    [service] = azure["services"].values()
    assert (service["project"], service["host"], service["language"]) == (".", "function", "python")
    assert "dist" not in service  # no prebuilt folder that would bypass .funcignore


@pytest.mark.parametrize("path", ["github-actions", "azd", "portal-zip"])
def test_each_deploy_path_ships_only_the_app(path: str, tmp_path: Path) -> None:
    """The package is built from this working tree as the path builds it (.venv, node_modules,
    the emulators and the tests are all present here, so an unfiltered package would hold them)."""
    if path == "portal-zip":  # scripts/package.py, as docs/deployment.md runs it
        out = tmp_path / "app.zip"
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), str(out)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        files = sorted(zipfile.ZipFile(out).namelist())
    else:  # functions-action (respect-funcignore) and azd: the project folder minus .funcignore
        files = package.package_files(ROOT)
    assert shipping_problems(files) == []
    assert any(f.startswith("shared/") for f in files)


def test_the_check_catches_a_funcignore_that_lets_tests_through(tmp_path: Path) -> None:
    copy = tmp_path / "app"
    for rel in (*MUST_SHIP, "tests/test_x.py", "devstack/graph_emulator.py", "docs/deployment.md"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_text("x")
    shutil.copy(ROOT / ".funcignore", copy / ".funcignore")
    assert shipping_problems(package.package_files(copy)) == []
    (copy / ".funcignore").write_text((ROOT / ".funcignore").read_text().replace("tests\n", ""))
    assert shipping_problems(package.package_files(copy)) == ["tests/test_x.py is in the package"]
    (copy / ".funcignore").unlink()
    assert len(shipping_problems(package.package_files(copy))) == 3


def test_pull_requests_run_the_ci_script() -> None:
    wf = _workflow("ci.yml")
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert "bash .ci/run" in runs
    uses = [str(s.get("uses", "")) for job in wf["jobs"].values() for s in job["steps"]]
    assert any(u.startswith("actions/setup-python") for u in uses) and any(u.startswith("actions/setup-node") for u in uses)


# --- the locks ------------------------------------------------------------------------------------
REQ = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", re.M)


def _locked(path: Path) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in REQ.findall(path.read_text())}


def _entries(path: Path) -> list[str]:
    """One string per requirement (its continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize(("lock", "source"), [("requirements.txt", "requirements.in"), ("requirements-dev.txt", "requirements-dev.in")])
def test_every_locked_requirement_is_pinned_with_hashes(lock: str, source: str) -> None:
    entries = _entries(ROOT / lock)
    assert len(entries) > 20  # the whole tree, not only the direct dependencies
    for entry in entries:
        assert REQ.match(entry.strip()), f"{lock}: not pinned with ==: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"{lock}: no hash for {entry.split()[0]}"
    # every direct dependency of the source is in the lock at the source's version
    locked = _locked(ROOT / lock)
    for name, version in REQ.findall((ROOT / source).read_text()):
        assert locked.get(name.lower().replace("_", "-")) == version, f"{name}=={version} of {source} is not in {lock}"
    assert f"--output-file={lock}" in (ROOT / lock).read_text()  # generated by pip-compile (scripts/lock.sh)


def test_the_dev_lock_holds_the_runtime_lock_at_the_same_versions() -> None:
    runtime, dev = _locked(ROOT / "requirements.txt"), _locked(ROOT / "requirements-dev.txt")
    assert {k: dev.get(k) for k in runtime} == runtime


def test_setup_installs_from_the_lock_and_only_what_each_script_needs() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes" in setup
    assert "checkov" not in re.sub(r"#.*", "", setup)
    assert "setup.sh --runtime-only" in (ROOT / "scripts" / "run.sh").read_text()
    assert "requirements-checkov.txt" in (ROOT / "scripts" / "test.sh").read_text()


@pytest.mark.parametrize("sync_api_url, args, runs", [
    (None, [], "-m devstack.demo"),
    (None, ["update"], "-m shared update"),
    (None, ["test-update", "--json"], "-m shared test-update --json"),
    ("https://dirsync.example.net/v1", [], "-m shared update"),
    ("https://dirsync.example.net/v1", ["replace"], "-m shared replace"),
])
def test_run_sh_starts_the_demo_only_without_settings_and_without_an_action(tmp_path, sync_api_url, args, runs) -> None:
    """``scripts/run.sh update`` with SYNC_API_URL forgotten runs the CLI, whose settings error
    names what is missing, rather than quietly starting the demo against the emulators. The
    script runs as shipped, in a copy of the tree whose setup and Python only record the call."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "run.sh", tmp_path / "scripts" / "run.sh")
    (tmp_path / "scripts" / "setup.sh").write_text("exit 0\n")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text('#!/usr/bin/env bash\necho "python $*"\n')
    (venv_bin / "python").chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", **({"SYNC_API_URL": sync_api_url} if sync_api_url else {})}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"python {runs}"
