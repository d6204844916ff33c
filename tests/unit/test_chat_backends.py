"""Chatbot backends and the Lex hook, without AWS: history bounds, Bedrock's Converse via a botocore Stubber,
and the hook that hands the caller's words to the flow."""

import boto3
import pytest
from botocore.stub import Stubber

import lex
from tts_stream.chat import BedrockChat, ChatError, Exchange, bounded_history


def test_history_keeps_the_most_recent_exchanges_that_fit_both_limits():
    history = [Exchange(f"q{i}", "a" * 100) for i in range(10)]
    kept = bounded_history(history, max_turns=6, max_chars=350)
    assert [e.question for e in kept] == ["q7", "q8", "q9"]
    assert bounded_history(history, max_turns=0, max_chars=10_000) == []
    assert [e.question for e in bounded_history(history, max_turns=2, max_chars=10_000)] == ["q8", "q9"]


@pytest.fixture
def bedrock():
    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        yield client, stub


def test_bedrock_gets_the_conversation_as_alternating_messages(bedrock):
    client, stub = bedrock
    stub.add_response("converse", {
        "output": {"message": {"role": "assistant", "content": [{"text": "It arrives on Friday."}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
        "metrics": {"latencyMs": 5}}, {
        "modelId": "model-x",
        "messages": [{"role": "user", "content": [{"text": "Hi"}]},
                     {"role": "assistant", "content": [{"text": "Hello"}]},
                     {"role": "user", "content": [{"text": "When does it arrive?"}]}],
        "system": [{"text": BedrockChat.SYSTEM}],
        "inferenceConfig": {"maxTokens": 400}})
    answer = BedrockChat("model-x", client=client).ask("When does it arrive?", [Exchange("Hi", "Hello")])
    assert answer == "It arrives on Friday."


@pytest.mark.parametrize("code", ["ThrottlingException", "AccessDeniedException", "ValidationException"])
def test_a_bedrock_refusal_is_a_chat_error_naming_the_code(bedrock, code):
    client, stub = bedrock
    stub.add_client_error("converse", service_error_code=code)
    with pytest.raises(ChatError, match=code):
        BedrockChat("model-x", client=client).ask("Hello?", [])


def test_an_empty_bedrock_answer_is_a_chat_error(bedrock):
    client, stub = bedrock
    stub.add_response("converse", {
        "output": {"message": {"role": "assistant", "content": [{"text": "  "}]}}, "stopReason": "end_turn",
        "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 5}})
    with pytest.raises(ChatError, match="no answer text"):
        BedrockChat("model-x", client=client).ask("Hello?", [])


def test_the_lex_hook_hands_the_transcript_to_the_flow_and_closes_the_intent():
    event = {"inputTranscript": "  where is my order  ", "sessionState": {
        "sessionAttributes": {"x-amz-lex:allow-interrupt:*:*": "true"},
        "intent": {"name": "FallbackIntent", "state": "InProgress"}}}
    state = lex.close(event)["sessionState"]
    assert state["sessionAttributes"]["Question"] == "where is my order"
    assert state["sessionAttributes"]["Heard"] == "yes"
    assert state["sessionAttributes"]["x-amz-lex:allow-interrupt:*:*"] == "true"
    assert state["dialogAction"] == {"type": "Close"}
    assert state["intent"] == {"name": "FallbackIntent", "state": "Fulfilled"}


@pytest.mark.parametrize("event", [{}, {"inputTranscript": "   "}, {"inputTranscript": None}, [], "text"],
                         ids=["empty", "blank", "none", "list", "string"])
def test_the_lex_hook_reports_silence_as_not_heard(event):
    state = lex.close(event)["sessionState"]
    assert state["sessionAttributes"]["Heard"] == "no" and state["sessionAttributes"]["Question"] == ""
