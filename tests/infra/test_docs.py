"""The README is the user's manual: it must name every setting the template has, and its test command must be
the one CI runs."""

from pathlib import Path

from localcloud import template as cfn

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_template_parameter_is_documented_in_the_readme():
    parameters = cfn.load(ROOT / "template.yaml").body["Parameters"]
    missing = [name for name in parameters if f"`{name}`" not in README]
    assert missing == [], f"document these parameters in README's Configuration table: {missing}"


def test_ci_runs_the_readmes_test_command():
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()

