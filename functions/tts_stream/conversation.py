"""The conversation of one contact: its turns and what was said, one DynamoDB item per contact.

Item attributes:
    contact_id      partition key (Connect's ContactId)
    current_turn    the newest turn started; a stream of an older turn never plays again
    current_stream  that turn's stream id; current_hash, current_started_ms: its question, to spot a retry
    turn_N          {question, answer} of turn N; only the last few turns are kept
    expires_at      TTL, epoch seconds
"""

from tts_stream.chat import Exchange


# Connect retries a Lambda within its 8-second limit: the same question again this soon is the same turn.
RETRY_WINDOW_MS = 10_000


class StaleTurn(ValueError):
    """Two turns of one contact started at the same moment: the later request must not start anything."""


def start_turn(ddb, table: str, contact_id: str, previous_turn: int, question_hash: str, *, now_ms: int,
               ttl_hours: int) -> tuple[int, str | None]:
    """Start the contact's next turn; return (turn, stream of the turn it replaces, to cancel).

    The turn comes from the conversation itself (never below what the flow remembers), so a flow that missed a
    reply cannot reuse a turn. The same question again within RETRY_WINDOW_MS, from a flow that has not yet
    seen that turn, is Connect retrying: same turn. Asked again after hearing the answer, it is a new turn.
    """
    item = ddb.get_item(TableName=table, Key={"contact_id": {"S": contact_id}}, ConsistentRead=True,
                        ProjectionExpression="current_turn, current_stream, current_hash, current_started_ms"
                        ).get("Item", {})
    current = int(item["current_turn"]["N"]) if "current_turn" in item else 0
    if (previous_turn < current and item.get("current_hash", {}).get("S") == question_hash
            and now_ms - int(item.get("current_started_ms", {}).get("N", "0")) < RETRY_WINDOW_MS):
        return current, None  # the flow never got the reply for `current`: Connect is retrying that request
    turn = max(current, previous_turn) + 1
    stream_id = f"{contact_id}-t{turn}"
    try:
        ddb.update_item(
            TableName=table,
            Key={"contact_id": {"S": contact_id}},
            UpdateExpression="SET current_turn = :t, current_stream = :s, current_hash = :h, current_started_ms = :now, "
                             "expires_at = :exp",
            # ... or our own write, already applied: the SDK resends a write whose answer was lost (a timeout)
            ConditionExpression="attribute_not_exists(current_turn) OR current_turn = :old OR "
                                "(current_turn = :t AND current_stream = :s AND current_hash = :h "
                                "AND current_started_ms = :now)",
            ExpressionAttributeValues={":t": {"N": str(turn)}, ":s": {"S": stream_id}, ":h": {"S": question_hash},
                                       ":now": {"N": str(now_ms)}, ":old": {"N": str(current)},
                                       ":exp": {"N": str(now_ms // 1000 + ttl_hours * 3600)}},
        )
    except ddb.exceptions.ConditionalCheckFailedException:
        raise StaleTurn(f"another turn of contact {contact_id} started at the same moment") from None
    return turn, item.get("current_stream", {}).get("S")


def history(ddb, table: str, contact_id: str, before_turn: int) -> dict[int, Exchange]:
    """This contact's exchanges of turns before `before_turn`, by turn, oldest first (never the turn itself,
    which a retried step may already have recorded)."""
    item = ddb.get_item(TableName=table, Key={"contact_id": {"S": contact_id}}, ConsistentRead=True).get("Item", {})
    turns = sorted((int(name[5:]), value["M"]) for name, value in item.items() if name.startswith("turn_"))
    return {turn: Exchange(value["question"]["S"], value["answer"]["S"]) for turn, value in turns
            if turn < before_turn}


def record_exchange(ddb, table: str, contact_id: str, turn: int, question: str, answer: str, *, earlier_turns,
                    keep_turns: int, now_ms: int, ttl_hours: int) -> None:
    """Add this turn's exchange and forget the `earlier_turns` that fall out of the last `keep_turns` exchanges,
    in one write; not if a newer turn has started meanwhile (the caller moved on and never heard this answer).
    Turns without an exchange (an apology) leave no gap in the window. Nothing is kept when keep_turns is 0."""
    if keep_turns <= 0:
        return
    earlier = sorted(earlier_turns)
    forget = earlier[:max(0, len(earlier) - (keep_turns - 1))]
    names = {"#t": f"turn_{turn}", **{f"#old{i}": f"turn_{old}" for i, old in enumerate(forget)}}
    update = "SET #t = :qa, expires_at = :exp"
    if forget:
        update += " REMOVE " + ", ".join(f"#old{i}" for i in range(len(forget)))
    try:
        ddb.update_item(
            TableName=table, Key={"contact_id": {"S": contact_id}},
            UpdateExpression=update, ExpressionAttributeNames=names,
            ConditionExpression="attribute_not_exists(current_turn) OR current_turn = :turn",
            ExpressionAttributeValues={":qa": {"M": {"question": {"S": question}, "answer": {"S": answer}}},
                                       ":exp": {"N": str(now_ms // 1000 + ttl_hours * 3600)},
                                       ":turn": {"N": str(turn)}},
        )
    except ddb.exceptions.ConditionalCheckFailedException:
        pass
