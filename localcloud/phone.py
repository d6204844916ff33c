"""A local phone: runs one call through a contact flow written in Amazon Connect's flow language.

Connect cannot run locally, so this interpreter executes the few action types our flows use, under Connect's
data rules: a parameter may be one JSONPath into the flow data (`$.Attributes.X`, `$.External.X`, `$.Lex.X`,
`$.ContactId`, `$.LanguageCode`), only the most recent Lambda reply is kept as `$.External`, and a block that
fails takes its Error branch.

A scripted `Caller` talks to the flow. Get customer input with a Lex V2 bot (ConnectParticipantWithLexBot) hears the
caller's next question through a simulated bot, the one the chat flow needs an admin to build in Lex: a `Goodbye`
intent, and a FallbackIntent whose code hook copies the transcript into the session attributes `Question` and
`Heard`. Get customer input with DTMF (GetParticipantInput) plays its prompt until the caller presses a key; Play
prompt (MessageParticipant) cannot be interrupted.

Time is real. A Lambda invocation takes as long as the callable does, and playing a part sleeps for the part's
duration divided by `speed`, so background synthesis races the call as it would on a phone line. All reported
times are milliseconds since the call started (time.monotonic).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tts_stream.audio import read_connect_wav, ulaw_wav

FLOW_VERSION = "2019-10-30"
ACTION_TYPES = frozenset(
    {"InvokeLambdaFunction", "UpdateContactAttributes", "Compare", "MessageParticipant", "DisconnectParticipant",
     "ConnectParticipantWithLexBot", "GetParticipantInput", "Loop"}
)
TERMINAL_TYPES = frozenset({"DisconnectParticipant"})
MAX_ACTIONS_PER_FLOW = 250
MAX_IDENTIFIER_LENGTH = 50
FORBIDDEN_IDENTIFIER_CHARS = frozenset("%:(\\/)=$,;[]{}")
LAMBDA_REPLY_MAX_BYTES = 32 * 1024
MAX_PROMPT_BYTES = 50 * 1024 * 1024
MAX_PROMPT_MS = 5 * 60 * 1000
MAX_LOOP_COUNT = 100
DTMF_KEYS = frozenset("0123456789*#")
ULAW_BYTES_PER_MS = 8  # 8 kHz, one byte per sample

# The simulated Lex V2 bot (what the chat flow's admin builds), with a locale per caller language: Connect talks to
# the locale of the contact's language. These utterances match the Goodbye intent, anything else the FallbackIntent,
# whose code hook sets QUESTION_ATTRIBUTE to the transcript and HEARD_ATTRIBUTE to yes/no.
GOODBYE_INTENT = "Goodbye"
FALLBACK_INTENT = "FallbackIntent"
GOODBYE_UTTERANCES = {
    "en-US": frozenset({"goodbye", "bye", "bye bye", "that's all", "that is all", "no thanks", "nothing else"}),
    "ko-KR": frozenset({"안녕히 계세요", "그만할게요", "끝", "없어요", "됐어요"}),
}
DEFAULT_LANGUAGE = "en-US"  # a contact's language until a flow sets it
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}-[A-Z]{2}")
QUESTION_ATTRIBUTE = "Question"
HEARD_ATTRIBUTE = "Heard"
SILENCE_RESULTS = ("fallback", "timeout")
_LEX_ALIAS_ARN = re.compile(r"arn:aws[a-z-]*:lex:[a-z0-9-]+:\d{12}:bot-alias/[A-Za-z0-9]+/[A-Za-z0-9]+")

INSTANCE_ARN = "arn:aws:connect:us-east-1:123456789012:instance/9308c2a1-9bc6-4cea-8290-6c0b4a6d38fa"
CUSTOMER_NUMBER = "+15550100001"
SYSTEM_NUMBER = "+15550100002"

_JSONPATH = re.compile(r"\$(?:\.[A-Za-z0-9_-]+|\['[^']*'\])+")
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\['([^']*)'\]")


class FlowError(RuntimeError):
    """The flow cannot run here: an unknown action type, a missing target, a runaway loop. Fix the flow."""


class LambdaReplyError(FlowError):
    """A Lambda reply breaks the block's ResponseValidation; Connect would take the Error branch. Fix the Lambda."""


@dataclass(frozen=True)
class KeyPress:
    """The caller presses `key` `after_ms` into the audio of part `part` of the answer to question `turn`.

    Both indexes count from 0: `turn` counts the questions the caller asks (silences are not turns), `part` the
    parts of that answer in the order they play. A press later than the part's audio lands as the audio ends. Only a
    part played by Get customer input (GetParticipantInput) can be interrupted; a Play prompt ignores the key.
    """

    turn: int
    part: int
    after_ms: float = 0.0
    key: str = "1"

    def __post_init__(self):
        if self.turn < 0 or self.part < 0 or self.after_ms < 0:
            raise ValueError(f"turn, part and after_ms must be >= 0, got {self!r}")
        if self.key not in DTMF_KEYS:
            raise ValueError(f"key must be one of {''.join(sorted(DTMF_KEYS))}, got {self.key!r}")


@dataclass(frozen=True)
class Caller:
    """A scripted caller: says `questions` in order, one per Listen, then nothing; presses keys as `presses` say.

    A None in `questions` is a Listen where the caller says nothing.

    `silence` is how the Lex block reports a caller who says nothing: "fallback" (the FallbackIntent with an empty
    transcript) or "timeout" (its InputTimeLimitExceeded error). Which one Connect does is not documented, so a flow
    should handle both. The utterances in GOODBYE_UTTERANCES[language] match the bot's Goodbye intent.

    `language` is the contact's language (`$.LanguageCode`) as an earlier flow set it, e.g. "ko-KR".
    """

    questions: Sequence[str | None] = ()
    presses: Sequence[KeyPress] = ()
    silence: str = "fallback"
    language: str = DEFAULT_LANGUAGE

    def __post_init__(self):
        if isinstance(self.questions, str) or not all(
                q is None or (isinstance(q, str) and q.strip()) for q in self.questions):
            raise ValueError(f"questions must be a list of non-empty strings or None, got {self.questions!r}")
        if self.silence not in SILENCE_RESULTS:
            raise ValueError(f"silence must be one of {SILENCE_RESULTS}, got {self.silence!r}")
        if not (isinstance(self.language, str) and _LANGUAGE_CODE.fullmatch(self.language)):
            raise ValueError(f"language must be a language code such as en-US or ko-KR, got {self.language!r}")
        seen = [(press.turn, press.part) for press in self.presses]
        if len(seen) != len(set(seen)):
            raise ValueError(f"at most one key press per part of a turn, got {list(self.presses)!r}")

    def press_for(self, turn: int, part: int) -> KeyPress | None:
        return next((p for p in self.presses if (p.turn, p.part) == (turn, part)), None)


@dataclass
class CallReport:
    """What the caller experienced. Times are ms since the call started; `parts` are in the order played.

    `turns` has one entry per question the caller asked: the `question`, the Lambda's `turn` and `stream_id` for it,
    the URLs of the `parts` played for it, whether a key press `interrupted` it, `asked_ms` (when the question was
    heard) and `ttfa_ms` (from then to its first audio).
    """

    final: bool = False
    status: str | None = None
    stream_id: str | None = None
    ttfa_ms: float | None = None
    parts: list[dict[str, Any]] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    lambda_invocations: int = 0
    ended_by: str | None = None
    path: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    audio_ulaw: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; the audio itself is summarized by its size (write_wav saves it)."""
        return {
            "final": self.final,
            "status": self.status,
            "stream_id": self.stream_id,
            "ttfa_ms": _round(self.ttfa_ms),
            "parts": [{**part, **{key: _round(part[key]) for key in ("played_ms", "duration_ms", "heard_ms")
                                  if key in part}}
                      for part in self.parts],
            "gaps_ms": [_round(gap) for gap in self.gaps_ms],
            "lambda_invocations": self.lambda_invocations,
            "ended_by": self.ended_by,
            "path": list(self.path),
            "messages": list(self.messages),
            "errors": list(self.errors),
            "turns": [{**turn, "parts": list(turn["parts"]), "asked_ms": _round(turn["asked_ms"]),
                       "ttfa_ms": _round(turn["ttfa_ms"])} for turn in self.turns],
            "audio_bytes": len(self.audio_ulaw),
        }

    def write_wav(self, path: str | Path) -> Path:
        """Write what the caller heard from the parts as an 8 kHz mono u-law WAV."""
        path = Path(path)
        path.write_bytes(ulaw_wav(self.audio_ulaw))
        return path


def successors(action: dict[str, Any]) -> list[str]:
    """Identifiers an action can go to next: its NextAction, its Conditions' and its Errors' targets."""
    transitions = action.get("Transitions") or {}
    targets = [transitions["NextAction"]] if "NextAction" in transitions else []
    targets += [condition["NextAction"] for condition in transitions.get("Conditions", [])]
    targets += [error["NextAction"] for error in transitions.get("Errors", [])]
    return targets


def check_flow(flow: dict[str, Any]) -> None:
    """Raise FlowError listing every way `flow` would fail to import or would strand a caller."""
    problems: list[str] = []
    if flow.get("Version") != FLOW_VERSION:
        problems.append(f"Version is {flow.get('Version')!r}; Connect accepts only {FLOW_VERSION!r}")
    actions = flow.get("Actions") or []
    if len(actions) > MAX_ACTIONS_PER_FLOW:
        problems.append(f"{len(actions)} actions; Connect accepts at most {MAX_ACTIONS_PER_FLOW}")
    by_id: dict[str, dict[str, Any]] = {}
    for action in actions:
        if action.get("Identifier", "") in by_id:
            problems.append(f"Identifier {action.get('Identifier')!r} is used twice")
        by_id[action.get("Identifier", "")] = action
    for identifier, action in by_id.items():
        if not identifier or len(identifier) > MAX_IDENTIFIER_LENGTH or FORBIDDEN_IDENTIFIER_CHARS & set(identifier):
            problems.append(f"Identifier {identifier!r} must be 1-{MAX_IDENTIFIER_LENGTH} characters without "
                            f"any of {''.join(sorted(FORBIDDEN_IDENTIFIER_CHARS))}")
        kind = action.get("Type")
        if kind not in ACTION_TYPES:
            problems.append(f"{identifier}: action type {kind!r} is not one this phone runs ({sorted(ACTION_TYPES)})")
        elif kind in TERMINAL_TYPES and action.get("Transitions") != {}:
            problems.append(f"{identifier}: a {kind} must have empty Transitions")
        elif kind not in TERMINAL_TYPES and "NextAction" not in (action.get("Transitions") or {}):
            problems.append(f"{identifier}: no Transitions.NextAction, so the call would stop here")
        else:
            problems += [f"{identifier}: {problem}" for problem in _action_problems(action)]
        for target in successors(action):
            if target not in by_id:
                problems.append(f"{identifier}: goes to {target!r}, which is not an action")
    start = flow.get("StartAction")
    if start not in by_id:
        problems.append(f"StartAction {start!r} is not an action")
    else:
        reachable = _reachable(by_id, [start], forward=True)
        ends = [i for i, a in by_id.items() if a.get("Type") in TERMINAL_TYPES]
        can_end = _reachable(by_id, ends, forward=False)
        for identifier in sorted(reachable - can_end):
            problems.append(f"{identifier}: no path from here reaches a DisconnectParticipant")
    if problems:
        raise FlowError("flow problems:\n  " + "\n  ".join(problems))


def _action_problems(action: dict[str, Any]) -> list[str]:
    """What Connect would refuse in one action of the types with rules of their own (flow language reference)."""
    kind, params = action.get("Type"), action.get("Parameters") or {}
    transitions = action.get("Transitions") or {}
    conditions = [c.get("Condition") or {} for c in transitions.get("Conditions", [])]
    operands = [(c.get("Operands") or [None])[0] for c in conditions]
    problems: list[str] = []
    if kind in {"ConnectParticipantWithLexBot", "GetParticipantInput"}:
        if any(c.get("Operator") != "Equals" for c in conditions):
            problems.append(f"a {kind} supports only the Equals operator in its Conditions")
        prompts = [key for key in ("PromptId", "Text", "SSML", "Media") if key in params]
        if len(prompts) > 1:
            problems.append(f"a {kind} takes at most one of PromptId, Text, SSML and Media, got {prompts}")
    if kind == "ConnectParticipantWithLexBot":
        if "Media" in params:
            problems.append("Get customer input cannot play an S3 prompt with an Amazon Lex V2 bot; use Text or SSML")
        if "AliasArn" not in (params.get("LexV2Bot") or {}):
            problems.append("needs LexV2Bot.AliasArn (Lex V1 bots are not run here)")
    elif kind == "GetParticipantInput":
        limit = params.get("InputTimeLimitSeconds")
        if not (isinstance(limit, str) and limit.isdigit() and int(limit) > 0):
            problems.append(f"InputTimeLimitSeconds must be a static whole number of seconds > 0, got {limit!r}")
        if params.get("StoreInput", "False") != "False":
            problems.append("only StoreInput 'False' (branch on the key pressed) is run here")
        if any(not (isinstance(o, str) and o in DTMF_KEYS) for o in operands):
            problems.append(f"DTMF conditions compare one static key (0-9, * or #), got {operands}")
    elif kind == "Loop":
        count = params.get("LoopCount")
        if not (isinstance(count, str) and (_JSONPATH.fullmatch(count)
                                            or (count.isdigit() and int(count) <= MAX_LOOP_COUNT))):
            problems.append(f"LoopCount must be 0..{MAX_LOOP_COUNT} or one JSONPath, got {count!r}")
        if sorted(map(str, operands)) != ["ContinueLooping", "DoneLooping"] or any(
                c.get("Operator") != "Equals" for c in conditions):
            problems.append("a Loop needs exactly the conditions Equals ContinueLooping and Equals DoneLooping")
    return problems


def simulate_call(
    flow: dict[str, Any],
    *,
    contact_id: str,
    attributes: dict[str, str],
    invoke_lambda: Callable[[str, dict[str, Any]], dict[str, Any]],
    fetch_part: Callable[[str], bytes],
    speed: float = 1.0,
    max_actions: int = 10_000,
    caller: Caller | None = None,
) -> CallReport:
    """Run one phone call through `flow`, from its StartAction to a DisconnectParticipant.

    `invoke_lambda(function_arn, event)` gets a Connect ContactFlowEvent and returns the Lambda's reply; if it
    raises, or replies after the block's InvocationTimeLimitSeconds, the block takes its Error branch (Connect
    gives up at the limit; here the call waits for the callable, then discards the late reply).
    `fetch_part(url)` returns the WAV at a Play prompt's S3 URL; a part that cannot be fetched or is not
    8 kHz mono u-law takes the Play block's Error branch, as in Connect.

    `caller` scripts what the caller says at each Get customer input with a Lex bot and which parts they interrupt
    with a key (see Caller); without one the caller says nothing and presses nothing.

    `speed` divides playback time and Get customer input's wait for a key: at speed > 1 the pipeline gets less wall
    time between Lambda calls than a real caller would give it, so the reported gaps and time to first audio are
    upper bounds of real ones.
    Raises FlowError for an action type or parameter this phone does not run, and when more than `max_actions`
    actions run (a loop that never ends).
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0 (1 = real time), got {speed!r}")
    bad = {k: v for k, v in attributes.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise ValueError(f"contact attributes must map strings to strings; not: {bad!r}")
    check_flow(flow)
    call = _Call(flow, contact_id, dict(attributes), invoke_lambda, fetch_part, speed, caller or Caller())
    return call.run(max_actions)


class _Call:
    """The state of one call: contact data, the last Lambda and Lex results, the caller, the clock and the report."""

    def __init__(self, flow, contact_id, attributes, invoke_lambda, fetch_part, speed, caller):
        self.actions = {action["Identifier"]: action for action in flow["Actions"]}
        self.start_action = flow["StartAction"]
        self.contact_id = contact_id
        self.attributes: dict[str, str] = attributes
        self.external: dict[str, Any] = {}
        self.invoke_lambda = invoke_lambda
        self.fetch_part = fetch_part
        self.speed = speed
        self.report = CallReport()
        self.started = time.monotonic()
        self.last_part_end_ms: float | None = None
        self.caller: Caller = caller
        self.questions_asked = 0
        self.lex: dict[str, Any] = {}  # the last Lex result, read as $.Lex
        self.lex_session: dict[str, str] = {}  # Lex keeps session attributes for the whole contact
        self.loop_runs: dict[str, int] = {}

    def now_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    def run(self, max_actions: int) -> CallReport:
        handlers = {
            "InvokeLambdaFunction": self.invoke,
            "UpdateContactAttributes": self.update_attributes,
            "Compare": self.compare,
            "MessageParticipant": self.message,
            "DisconnectParticipant": lambda action: None,
            "ConnectParticipantWithLexBot": self.listen,
            "GetParticipantInput": self.gather,
            "Loop": self.loop,
        }
        identifier: str | None = self.start_action
        while identifier is not None:
            if len(self.report.path) >= max_actions:
                raise FlowError(f"more than {max_actions} actions ran; the flow loops without ending. "
                                f"Last actions: {self.report.path[-12:]}")
            action = self.actions[identifier]
            handler = handlers.get(action["Type"])
            if handler is None:
                raise FlowError(f"{identifier}: action type {action['Type']!r} is not one this phone runs")
            self.report.path.append(identifier)
            self.report.ended_by = identifier
            identifier = handler(action)
        return self.report

    # --- actions -------------------------------------------------------------------------------------------

    def invoke(self, action: dict[str, Any]) -> str:
        params = action["Parameters"]
        name = action["Identifier"]
        if params.get("InvocationType", "SYNCHRONOUS") != "SYNCHRONOUS":
            raise FlowError(f"{name}: only SYNCHRONOUS Lambda invocations are run here")
        limit_s = int(params.get("InvocationTimeLimitSeconds", "8"))
        if not 1 <= limit_s <= 8:
            raise FlowError(f"{name}: InvocationTimeLimitSeconds must be 1..8 for a synchronous call, got {limit_s}")
        response_type = (params.get("ResponseValidation") or {}).get("ResponseType", "STRING_MAP")
        if response_type not in {"STRING_MAP", "JSON"}:
            raise FlowError(f"{name}: ResponseType must be STRING_MAP or JSON, got {response_type!r}")
        arn = self.resolve(params["LambdaFunctionARN"], name)
        parameters = {key: self.resolve_string(value, name)
                      for key, value in (params.get("LambdaInvocationAttributes") or {}).items()}
        event = self.event(parameters)

        self.report.lambda_invocations += 1
        began = time.monotonic()
        try:
            reply = self.invoke_lambda(arn, event)
        except Exception as exc:  # noqa: BLE001 - any failure is Connect's Error branch; it is kept in the report
            self.report.errors.append(f"{name}: the Lambda raised {type(exc).__name__}: {exc}")
            return self.error_branch(action)
        elapsed_s = time.monotonic() - began
        if elapsed_s > limit_s:
            self.report.errors.append(f"{name}: the Lambda replied after {elapsed_s:.2f} s, past its {limit_s} s limit")
            return self.error_branch(action)
        _check_reply(name, reply, response_type)

        self.external = dict(reply)
        turn = self.current_turn()
        if turn is not None and "Turn" in reply:  # chat_and_stream started the stream that answers this turn
            turn["turn"], turn["stream_id"] = reply["Turn"], reply.get("StreamId")
        if "Status" in reply:
            self.report.status = reply["Status"]
        if "StreamId" in reply:
            self.report.stream_id = reply["StreamId"]
        if "Final" in reply:
            self.report.final = reply["Final"] == "true"
        return action["Transitions"]["NextAction"]

    def update_attributes(self, action: dict[str, Any]) -> str:
        params = action["Parameters"]
        name = action["Identifier"]
        if params.get("TargetContact", "Current") != "Current":
            raise FlowError(f"{name}: only TargetContact 'Current' is run here")
        # All attributes are set or none are, as in Connect: resolve every value before writing any.
        values = {key: self.resolve_string(value, name) for key, value in params["Attributes"].items()}
        self.attributes.update(values)
        return action["Transitions"]["NextAction"]

    def compare(self, action: dict[str, Any]) -> str:
        name = action["Identifier"]
        path = action["Parameters"]["ComparisonValue"]
        if not (isinstance(path, str) and _JSONPATH.fullmatch(path)):
            raise FlowError(f"{name}: ComparisonValue must be a single JSONPath, got {path!r}")
        value = self.resolve(path, name)
        transitions = action["Transitions"]
        for condition in transitions.get("Conditions", []):
            if _matches(name, condition["Condition"], value):
                return condition["NextAction"]
        return self.error_branch(action, "NoMatchingCondition", default=transitions["NextAction"])

    def message(self, action: dict[str, Any]) -> str:
        params = action["Parameters"]
        name = action["Identifier"]
        unknown = set(params) - {"Text", "Media"}
        if unknown or len(params) != 1:
            raise FlowError(f"{name}: a MessageParticipant here takes exactly one of Text or Media, got {sorted(params)}")
        if "Text" in params:
            self.report.messages.append(self.resolve_string(params["Text"], name))
            return action["Transitions"]["NextAction"]

        wav = self.load_prompt(name, params["Media"])
        if wav is None:
            return self.error_branch(action)
        self.play(wav, self.resolve_string(params["Media"]["Uri"], name))
        return action["Transitions"]["NextAction"]

    def listen(self, action: dict[str, Any]) -> str:
        """Get customer input with a Lex V2 bot: speak the prompt, hear the caller's next question through the bot."""
        params = action["Parameters"]
        name = action["Identifier"]
        unknown = set(params) - {"Text", "SSML", "LexV2Bot", "LexSessionAttributes"}
        if unknown:
            raise FlowError(f"{name}: a ConnectParticipantWithLexBot here takes Text or SSML, LexV2Bot and "
                            f"LexSessionAttributes, not {sorted(unknown)}")
        alias = self.resolve_string(params["LexV2Bot"]["AliasArn"], name)
        if not _LEX_ALIAS_ARN.fullmatch(alias):
            raise FlowError(f"{name}: LexV2Bot.AliasArn must be a Lex V2 bot alias ARN "
                            f"(arn:aws:lex:REGION:ACCOUNT:bot-alias/BOT_ID/ALIAS_ID), got {alias!r}")
        for key in ("Text", "SSML"):
            if key in params:
                self.report.messages.append(self.resolve_string(params[key], name))
        # Attributes the block passes are set before the bot runs; the bot's code hook may overwrite them.
        self.lex_session.update({key: self.resolve_string(value, name)
                                 for key, value in (params.get("LexSessionAttributes") or {}).items()})

        question = None
        if self.questions_asked < len(self.caller.questions):
            question = self.caller.questions[self.questions_asked]
            self.questions_asked += 1
        if question is None and self.caller.silence == "timeout":
            self.lex = {"SessionAttributes": dict(self.lex_session)}
            return self.error_branch(action, "InputTimeLimitExceeded")

        goodbyes = GOODBYE_UTTERANCES.get(self.caller.language)
        if goodbyes is None:  # Connect talks to the bot's locale for the contact's language; this bot has none
            self.report.errors.append(f"{name}: the bot has no locale for the contact's language "
                                      f"{self.caller.language} (it has {', '.join(GOODBYE_UTTERANCES)})")
            return self.error_branch(action)
        intent = GOODBYE_INTENT if _normalized(question or "") in goodbyes else FALLBACK_INTENT
        if intent == FALLBACK_INTENT:  # the FallbackIntent's code hook
            self.lex_session[QUESTION_ATTRIBUTE] = question or ""
            self.lex_session[HEARD_ATTRIBUTE] = "yes" if question else "no"
            if question:
                self.report.turns.append({"question": question, "turn": None, "stream_id": None, "parts": [],
                                          "interrupted": False, "asked_ms": self.now_ms(), "ttfa_ms": None})
        self.lex = {"IntentName": intent, "Slots": {}, "SessionAttributes": dict(self.lex_session),
                    "DialogState": "Fulfilled"}
        transitions = action["Transitions"]
        for condition in transitions.get("Conditions", []):
            if condition["Condition"]["Operands"][0] == intent:
                return condition["NextAction"]
        return self.error_branch(action, "NoMatchingCondition", default=transitions["NextAction"])

    def gather(self, action: dict[str, Any]) -> str:
        """Get customer input with DTMF: play the prompt until a key is pressed, or then wait for one."""
        params = action["Parameters"]
        name = action["Identifier"]
        unknown = set(params) - {"Text", "SSML", "Media", "InputTimeLimitSeconds", "StoreInput", "DTMFConfiguration"}
        if unknown:
            raise FlowError(f"{name}: a GetParticipantInput here takes Text, SSML or Media, InputTimeLimitSeconds, "
                            f"StoreInput and DTMFConfiguration, not {sorted(unknown)}")
        wait_ms = int(params["InputTimeLimitSeconds"]) * 1000
        press = None
        if "Media" in params:
            wav = self.load_prompt(name, params["Media"])
            if wav is None:
                return self.error_branch(action)
            turn = self.current_turn()
            if turn is not None:
                press = self.caller.press_for(len(self.report.turns) - 1, len(turn["parts"]))
            heard_ms = None if press is None else min(press.after_ms, wav.duration_ms)
            self.play(wav, self.resolve_string(params["Media"]["Uri"], name), heard_ms=heard_ms)
            if press is not None and turn is not None:
                turn["interrupted"] = True
        else:
            for key in ("Text", "SSML"):
                if key in params:
                    self.report.messages.append(self.resolve_string(params[key], name))
        transitions = action["Transitions"]
        if press is None:
            # The caller says nothing: Connect waits InputTimeLimitSeconds for a first key, then times out.
            time.sleep(wait_ms / self.speed / 1000)
            return self.error_branch(action, "InputTimeLimitExceeded")
        for condition in transitions.get("Conditions", []):
            if condition["Condition"]["Operands"][0] == press.key:
                return condition["NextAction"]
        return self.error_branch(action, "NoMatchingCondition", default=transitions["NextAction"])

    def loop(self, action: dict[str, Any]) -> str:
        """Loop: ContinueLooping the first LoopCount times this action runs, then DoneLooping once, then again."""
        name = action["Identifier"]
        count = self.resolve(action["Parameters"]["LoopCount"], name)
        if not (isinstance(count, str) and count.isdigit() and int(count) <= MAX_LOOP_COUNT):
            raise FlowError(f"{name}: LoopCount resolves to {count!r}, not a whole number 0..{MAX_LOOP_COUNT}")
        runs = self.loop_runs.get(name, 0) + 1
        result = "ContinueLooping" if runs <= int(count) else "DoneLooping"
        self.loop_runs[name] = runs if result == "ContinueLooping" else 0
        for condition in action["Transitions"]["Conditions"]:
            if condition["Condition"]["Operands"][0] == result:
                return condition["NextAction"]
        raise FlowError(f"{name}: no condition for {result}")

    # --- playing -------------------------------------------------------------------------------------------

    def load_prompt(self, name: str, media: dict[str, Any]):
        """The WAV at an S3 prompt, or None (with the reason in the report) where Connect would take Error."""
        if media.get("SourceType") != "S3" or media.get("MediaType") != "Audio":
            raise FlowError(f"{name}: Media must have SourceType 'S3' and MediaType 'Audio', got {media!r}")
        url = self.resolve_string(media["Uri"], name)
        if not url:
            self.report.errors.append(f"{name}: the prompt URL {media['Uri']!r} is empty")
            return None
        try:
            data = self.fetch_part(url)
            if len(data) >= MAX_PROMPT_BYTES:
                raise ValueError(f"{len(data)} bytes; Connect plays prompts under 50 MB")
            wav = read_connect_wav(data)
            if wav.duration_ms >= MAX_PROMPT_MS:
                raise ValueError(f"{wav.duration_ms:.0f} ms long; Connect plays prompts under 5 minutes")
        except Exception as exc:  # noqa: BLE001 - Connect takes the Error branch and plays nothing
            self.report.errors.append(f"{name}: cannot play {url}: {type(exc).__name__}: {exc}")
            return None
        return wav

    def play(self, wav, url: str, heard_ms: float | None = None) -> None:
        """Play a part in real time (divided by speed); `heard_ms` cuts it short where the caller pressed a key."""
        played_ms = self.now_ms()
        if self.last_part_end_ms is None:
            self.report.ttfa_ms = played_ms
        else:
            self.report.gaps_ms.append(played_ms - self.last_part_end_ms)
        length_ms = wav.duration_ms if heard_ms is None else heard_ms
        time.sleep(length_ms / self.speed / 1000)
        self.last_part_end_ms = self.now_ms()
        part: dict[str, Any] = {"url": url, "played_ms": played_ms, "duration_ms": wav.duration_ms}
        audio = wav.ulaw
        if heard_ms is not None:
            audio = wav.ulaw[:round(heard_ms * ULAW_BYTES_PER_MS)]
            part.update(heard_ms=heard_ms, interrupted=True)
        turn = self.current_turn()
        if turn is not None:
            part["turn"] = len(self.report.turns) - 1
            if turn["ttfa_ms"] is None:
                turn["ttfa_ms"] = played_ms - turn["asked_ms"]
            turn["parts"].append(url)
        self.report.parts.append(part)
        self.report.audio_ulaw += audio

    def current_turn(self) -> dict[str, Any] | None:
        return self.report.turns[-1] if self.report.turns else None

    # --- data ----------------------------------------------------------------------------------------------

    def contact_data(self) -> dict[str, Any]:
        """ContactData shaped like `sam local generate-event connect contact-flow-event` (an inbound call)."""
        return {
            "Attributes": dict(self.attributes),
            "Channel": "VOICE",
            "ContactId": self.contact_id,
            "CustomerEndpoint": {"Address": CUSTOMER_NUMBER, "Type": "TELEPHONE_NUMBER"},
            "InitialContactId": self.contact_id,
            "InitiationMethod": "INBOUND",
            "InstanceARN": INSTANCE_ARN,
            "MediaStreams": {"Customer": {"Audio": None}},
            "PreviousContactId": self.contact_id,
            "Queue": None,
            "SystemEndpoint": {"Address": SYSTEM_NUMBER, "Type": "TELEPHONE_NUMBER"},
        }

    def event(self, parameters: dict[str, str]) -> dict[str, Any]:
        return {"Name": "ContactFlowEvent", "Details": {"ContactData": self.contact_data(), "Parameters": parameters}}

    def resolve(self, value: Any, name: str) -> Any:
        """A static value as is; a whole-value JSONPath looked up in the flow data ('' where nothing is set)."""
        if not isinstance(value, str) or "$" not in value:
            return value
        if not _JSONPATH.fullmatch(value):
            raise FlowError(f"{name}: {value!r} mixes text and JSONPath; only whole-value JSONPaths are run here")
        node: Any = {**self.contact_data(), "LanguageCode": self.caller.language, "External": self.external,
                     "Lex": self.lex}
        for dotted, bracketed in _SEGMENT.findall(value[1:]):
            key = dotted or bracketed
            if not isinstance(node, dict) or key not in node:
                return ""
            node = node[key]
        return node

    def resolve_string(self, value: Any, name: str) -> str:
        resolved = self.resolve(value, name)
        if not isinstance(resolved, str):
            raise FlowError(f"{name}: {value!r} resolves to {resolved!r}, not a string")
        return resolved

    def error_branch(self, action: dict[str, Any], error_type: str = "NoMatchingError",
                     default: str | None = None) -> str:
        errors = {error["ErrorType"]: error["NextAction"] for error in action["Transitions"].get("Errors", [])}
        target = errors.get(error_type) or default or errors.get("NoMatchingError")
        if target is None:
            raise FlowError(f"{action['Identifier']}: failed ({error_type}) and has no branch for it")
        return target


def _check_reply(name: str, reply: Any, response_type: str) -> None:
    if not isinstance(reply, dict):
        raise LambdaReplyError(f"{name}: the Lambda replied {type(reply).__name__}, not a JSON object")
    if response_type == "STRING_MAP":
        bad = {k: v for k, v in reply.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise LambdaReplyError(f"{name}: ResponseValidation STRING_MAP needs string values; not: {bad!r}")
    size = len(json.dumps(reply).encode("utf-8"))
    if size >= LAMBDA_REPLY_MAX_BYTES:
        raise LambdaReplyError(f"{name}: the reply is {size} bytes; Connect accepts under {LAMBDA_REPLY_MAX_BYTES}")


def _matches(name: str, condition: dict[str, Any], value: Any) -> bool:
    operator = condition["Operator"]
    operand = condition["Operands"][0]
    text = "" if value is None else str(value)
    if operator == "Equals":
        return text == operand
    if operator in _TEXT_OPERATORS:
        return _TEXT_OPERATORS[operator](text, operand)
    if operator in _NUMBER_OPERATORS:
        try:
            return _NUMBER_OPERATORS[operator](float(text), float(operand))
        except ValueError:
            return False
    raise FlowError(f"{name}: condition operator {operator!r} is not one this phone runs")


_TEXT_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "TextStartsWith": str.startswith,
    "TextEndsWith": str.endswith,
    "TextContains": lambda text, part: part in text,
}
_NUMBER_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "NumberGreaterThan": lambda a, b: a > b,
    "NumberGreaterOrEqualTo": lambda a, b: a >= b,
    "NumberLessThan": lambda a, b: a < b,
    "NumberLessOrEqualTo": lambda a, b: a <= b,
}


def _reachable(by_id: dict[str, dict[str, Any]], starts: list[str], *, forward: bool) -> set[str]:
    edges: dict[str, set[str]] = {identifier: set() for identifier in by_id}
    for identifier, action in by_id.items():
        for target in successors(action):
            if target in edges:
                (edges[identifier] if forward else edges[target]).add(target if forward else identifier)
    seen, todo = set(), list(starts)
    while todo:
        identifier = todo.pop()
        if identifier not in seen:
            seen.add(identifier)
            todo.extend(edges[identifier])
    return seen


def _normalized(utterance: str) -> str:
    return " ".join(utterance.lower().replace("’", "'").strip(" .,!?").split())


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)
