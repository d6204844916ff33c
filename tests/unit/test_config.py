"""Settings from the environment: what an operator types into a function's variables is read as they meant it,
or refused naming the variable."""

import pytest

from tts_stream import config


def test_a_setting_that_is_not_a_whole_number_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="environment variable BATCH_WAIT_MS must be a whole number, got '2.5s'"):
        config.load({"BATCH_WAIT_MS": "2.5s"})


def test_an_empty_number_setting_is_its_default():
    assert config.load({"BATCH_WAIT_MS": ""}).batch_wait_ms == config.load({}).batch_wait_ms == 2500


@pytest.mark.parametrize("env, region", [
    ({"AWS_REGION": "ap-northeast-2", "AWS_DEFAULT_REGION": "eu-west-1"}, "ap-northeast-2"),  # Lambda sets both
    ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
    ({"AWS_REGION": ""}, "us-east-1"),
])
def test_the_region_is_lambdas_then_the_sdks_default_then_us_east_1(env, region):
    assert config.load(env).region == region


@pytest.mark.parametrize("value, on", [("true", True), ("True", True), ("TRUE", True), ("false", False),
                                       ("no", False), ("1", False)])
def test_switches_are_true_only_when_they_say_true_in_any_case(value, on):
    settings = config.load({"LOG_CALLER_TEXT": value, "PROMPT_CACHE": value, "INLINE_FIRST_PART": value})
    assert (settings.log_caller_text, settings.prompt_cache, settings.inline_first_part) == (on, on, on)


def test_a_blank_engine_or_backend_choice_is_the_default_one():
    settings = config.load({"POLLY_ENGINE": "", "CHAT_BACKEND": ""})
    assert (settings.polly_engine, settings.chat_backend) == ("neural", "http")
