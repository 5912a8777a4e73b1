"""Mutation testing (mutmut) over the modules of tests/mutation/modules.toml, one at a time.

Usage: ``python tests/mutation/run.py [--children N] [--target 85] [name ...]`` (default: every
module). Each module runs in a scratch copy under ``var/mutation/<name>/`` (its package, the tests,
the workspace's pytest settings), never in the work tree, so other runs of the suite are not
disturbed. Prints the score per module (killed / mutants, timeouts count as killed) and the
surviving mutants, and exits 1 when a module scores below the target. ``mutmut show <mutant>`` in
that folder shows a survivor's diff.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = Path(__file__).with_name("modules.toml")
KILLED = {"killed", "timeout", "caught by type check"}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")


def modules() -> dict[str, dict[str, object]]:
    return tomllib.loads(MODULES.read_text())["modules"]


def prepare(name: str, spec: dict[str, object], work: Path) -> None:
    """The scratch copy: src/<package>, tests/, and pyproject.toml with this module's [tool.mutmut]."""
    shutil.rmtree(work, ignore_errors=True)
    package = ROOT / str(spec["package"])
    shutil.copytree(package, work / "src" / package.name, ignore=IGNORE)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", "bench", "mutation"))
    config = {
        "source_paths": ["src"],
        "only_mutate": [f"src/{package.name}/{pattern}" for pattern in spec["mutate"]],  # type: ignore[attr-defined]
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
        "pytest_add_cli_args_test_selection": list(spec["tests"]),  # type: ignore[call-overload]
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n")


def statuses(work: Path) -> dict[str, str]:
    """Every mutant's name and status, as ``mutmut results --all true`` reports them."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in key:
            found[key] = status
    return found


def run(name: str, spec: dict[str, object], children: int) -> tuple[int, int, list[str]]:
    """Mutate one module and run its tests against each mutant; (killed, mutants, survivors)."""
    work = ROOT / "var" / "mutation" / name
    prepare(name, spec, work)
    log = work / "mutmut.log"
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    found = statuses(work)
    if not found:
        raise SystemExit(f"{name}: mutmut produced no results; see {log}")
    counts = Counter(found.values())
    tested = sum(n for status, n in counts.items() if status != "skipped")
    killed = sum(n for status, n in counts.items() if status in KILLED)
    survivors = sorted(f"{k}: {status}" for k, status in found.items() if status not in KILLED | {"skipped"})
    (work / "survivors.txt").write_text("".join(f"{s}\n" for s in survivors))
    return killed, tested, survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="modules to run (default: all of modules.toml)")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--target", type=float, default=85.0, help="the least killed share in %% (default 85)")
    args = parser.parse_args()
    table = modules()
    unknown = [n for n in args.names if n not in table]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {sorted(table)}")
    scores = []
    for name in args.names or list(table):
        killed, tested, survivors = run(name, table[name], args.children)
        score = 100.0 * killed / tested if tested else 100.0
        verdict = "met" if score >= args.target else "NOT MET"
        scores.append((name, killed, tested, score, verdict))
        print(f"{name}: {killed}/{tested} mutants killed = {score:.1f}% (target {args.target:.0f}%: {verdict})")
        for survivor in survivors:
            print(f"    {survivor}")
        sys.stdout.flush()
    print("\nmutation score per module:")
    for name, killed, tested, score, verdict in scores:
        print(f"  {name:<22} {killed:>5}/{tested:<5} {score:5.1f}%  {verdict}")
    return 1 if any(v != "met" for *_, v in scores) else 0


if __name__ == "__main__":
    raise SystemExit(main())
