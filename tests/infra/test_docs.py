"""The README is the user's manual: it must name every setting the template has, and its test command must be
the one CI runs."""

import re
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



def test_settings_the_template_does_not_set_are_documented_with_the_defaults_the_code_uses():
    # Read by the functions with a default of their own; an operator sets them on a function by hand
    from tts_stream import config

    bare = config.load({})
    said = {name: value for name, value in re.findall(r"`([A-Z_]+)` \(`?([\w.]+)", README)}
    for name, field in [("POLL_INTERVAL_MS", "poll_interval_ms"), ("STREAM_TIMEOUT_SECONDS", "stream_timeout_seconds"),
                        ("INLINE_FIRST_PART", "inline_first_part"), ("HISTORY_TURNS", "history_turns"),
                        ("HISTORY_CHARS", "history_chars")]:
        assert said.get(name) == str(getattr(bare, field)).lower(), name
