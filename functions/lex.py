"""Lex V2 code hook for the chat flow: put what the caller said where the contact flow can read it.

Connect's flow language exposes Lex session attributes ($.Lex.SessionAttributes.X) but not the raw
transcript, so the bot's FallbackIntent calls this hook, which copies `inputTranscript` into the session
attribute `Question` (and `Heard`, yes/no, since a flow cannot test for an empty value) and closes the intent.
"""

from aws_lambda_powertools import Logger

logger = Logger()


def close(event: dict) -> dict:
    transcript = event.get("inputTranscript") if isinstance(event, dict) else None
    question = transcript.strip() if isinstance(transcript, str) else ""
    state = event.get("sessionState") if isinstance(event, dict) and isinstance(event.get("sessionState"), dict) else {}
    attributes = dict(state.get("sessionAttributes") or {})
    attributes.update({"Question": question, "Heard": "yes" if question else "no"})
    intent = dict(state.get("intent") or {"name": "FallbackIntent"})
    intent["state"] = "Fulfilled"
    return {"sessionState": {"sessionAttributes": attributes, "dialogAction": {"type": "Close"}, "intent": intent}}


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
    response = close(event)
    logger.info("question heard", heard=response["sessionState"]["sessionAttributes"]["Heard"])
    return response
