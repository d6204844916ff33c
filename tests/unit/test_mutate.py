"""tools/mutate.py, the mutation audit: its mutants change behaviour, a run tells killed from survived, and the
module it rewrites is restored."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tools import mutate

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "mutate.py"

MODULE = '''"""A module to mutate."""
LIMIT = 3


def fits(n):
    """Docstrings are never mutated."""
    return n <= LIMIT
'''


def _project(tmp_path: Path, test: str) -> tuple[list[str], Path]:
    """MODULE as limits.py with one test of it; the command that audits it, and where its results go."""
    (tmp_path / "limits.py").write_text(MODULE)
    (tmp_path / "test_limits.py").write_text(f"import time\n\nfrom limits import fits\n\n\n{test}")
    out = tmp_path / "mutants.json"
    return [sys.executable, str(SCRIPT), "limits.py", "--out", str(out), "--", "-p", "no:logging",
            "test_limits.py"], out


def test_each_mutant_is_one_change_that_alters_what_the_code_does():
    found = {(kind, line) for _, kind, line in mutate.sites(MODULE)}
    assert found == {("int+1", 2), ("LtE->Lt", 7), ("return-None", 7)}
    behaviour = {}
    for number, kind, _ in mutate.sites(MODULE):
        scope = {}
        exec(mutate.mutant(MODULE, number, kind), scope)
        behaviour[kind] = [scope["fits"](n) for n in (3, 4)]
    assert behaviour == {"int+1": [True, True], "LtE->Lt": [False, False], "return-None": [None, None]}


def test_a_condition_string_loses_one_clause_at_a_time():
    condition = "attribute_exists(k) AND #s <> :c AND (attribute_not_exists(t) OR t > :i)"
    assert [condition[a:b] for a, b in mutate.clauses(condition)] == [
        "attribute_exists(k)", "#s <> :c", "(attribute_not_exists(t) OR t > :i)"]
    assert mutate._drop_clause(condition, 1) == "attribute_exists(k) AND (attribute_not_exists(t) OR t > :i)"
    assert mutate.clauses("status = :s") == []


def test_a_run_reports_the_mutants_its_tests_miss_and_restores_the_module(tmp_path):
    # A test far from the edge: it cannot tell 3 from 4, nor <= from <
    command, out = _project(tmp_path, "def test_far():\n    assert fits(0) is True and fits(10) is False\n")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = {r["kind"]: r["result"] for r in json.loads(out.read_text())}
    assert results == {"int+1": "survived", "LtE->Lt": "survived", "return-None": "killed"}
    assert "2 of 3 survived\n  line 2: int+1\n  line 7: LtE->Lt" in done.stdout
    assert (tmp_path / "limits.py").read_text() == MODULE


def test_a_run_stopped_with_kill_restores_the_module(tmp_path):
    # A run in the background ignores Ctrl-C: `kill` is how it is stopped, and the module must not stay mutated
    command, out = _project(tmp_path, "def test_slow():\n    time.sleep(1)\n    assert fits(0)\n")
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:  # the first mutant is done, the second running
            time.sleep(0.05)
        assert (tmp_path / "limits.py").read_text() != MODULE
        run.terminate()
        _, stderr = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 130
    assert re.search(r"stopped after [12] of 3 mutants; limits.py is restored", stderr), stderr
    assert (tmp_path / "limits.py").read_text() == MODULE
