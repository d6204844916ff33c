"""A local phone: runs one call through a contact flow written in Amazon Connect's flow language.

Connect cannot run locally, so this interpreter executes the few action types our flow uses, under Connect's
data rules: a parameter may be one JSONPath into the flow data (`$.Attributes.X`, `$.External.X`, `$.ContactId`),
only the most recent Lambda reply is kept as `$.External`, and a block that fails takes its Error branch.

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
from typing import Any, Callable

from tts_stream.audio import read_connect_wav, ulaw_wav

FLOW_VERSION = "2019-10-30"
ACTION_TYPES = frozenset(
    {"InvokeLambdaFunction", "UpdateContactAttributes", "Compare", "MessageParticipant", "DisconnectParticipant"}
)
TERMINAL_TYPES = frozenset({"DisconnectParticipant"})
MAX_ACTIONS_PER_FLOW = 250
MAX_IDENTIFIER_LENGTH = 50
FORBIDDEN_IDENTIFIER_CHARS = frozenset("%:(\\/)=$,;[]{}")
LAMBDA_REPLY_MAX_BYTES = 32 * 1024
MAX_PROMPT_BYTES = 50 * 1024 * 1024
MAX_PROMPT_MS = 5 * 60 * 1000

INSTANCE_ARN = "arn:aws:connect:us-east-1:123456789012:instance/9308c2a1-9bc6-4cea-8290-6c0b4a6d38fa"
CUSTOMER_NUMBER = "+15550100001"
SYSTEM_NUMBER = "+15550100002"

_JSONPATH = re.compile(r"\$(?:\.[A-Za-z0-9_-]+|\['[^']*'\])+")
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\['([^']*)'\]")


class FlowError(RuntimeError):
    """The flow cannot run here: an unknown action type, a missing target, a runaway loop. Fix the flow."""


class LambdaReplyError(FlowError):
    """A Lambda reply breaks the block's ResponseValidation; Connect would take the Error branch. Fix the Lambda."""


@dataclass
class CallReport:
    """What the caller experienced. Times are ms since the call started; `parts` are in the order played."""

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
    audio_ulaw: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; the audio itself is summarized by its size (write_wav saves it)."""
        return {
            "final": self.final,
            "status": self.status,
            "stream_id": self.stream_id,
            "ttfa_ms": _round(self.ttfa_ms),
            "parts": [{**part, "played_ms": _round(part["played_ms"]), "duration_ms": _round(part["duration_ms"])}
                      for part in self.parts],
            "gaps_ms": [_round(gap) for gap in self.gaps_ms],
            "lambda_invocations": self.lambda_invocations,
            "ended_by": self.ended_by,
            "path": list(self.path),
            "messages": list(self.messages),
            "errors": list(self.errors),
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


def simulate_call(
    flow: dict[str, Any],
    *,
    contact_id: str,
    attributes: dict[str, str],
    invoke_lambda: Callable[[str, dict[str, Any]], dict[str, Any]],
    fetch_part: Callable[[str], bytes],
    speed: float = 1.0,
    max_actions: int = 10_000,
) -> CallReport:
    """Run one phone call through `flow`, from its StartAction to a DisconnectParticipant.

    `invoke_lambda(function_arn, event)` gets a Connect ContactFlowEvent and returns the Lambda's reply; if it
    raises, or replies after the block's InvocationTimeLimitSeconds, the block takes its Error branch (Connect
    gives up at the limit; here the call waits for the callable, then discards the late reply).
    `fetch_part(url)` returns the WAV at a Play prompt's S3 URL; a part that cannot be fetched or is not
    8 kHz mono u-law takes the Play block's Error branch, as in Connect.

    `speed` divides playback time only: at speed > 1 the pipeline gets less wall time between Lambda calls than a
    real caller would give it, so the reported gaps and time to first audio are upper bounds of real ones.
    Raises FlowError for an action type or parameter this phone does not run, and when more than `max_actions`
    actions run (a loop that never ends).
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0 (1 = real time), got {speed!r}")
    bad = {k: v for k, v in attributes.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise ValueError(f"contact attributes must map strings to strings; not: {bad!r}")
    check_flow(flow)
    call = _Call(flow, contact_id, dict(attributes), invoke_lambda, fetch_part, speed)
    return call.run(max_actions)


class _Call:
    """The state of one call: contact data, the last Lambda reply, the clock and the report."""

    def __init__(self, flow, contact_id, attributes, invoke_lambda, fetch_part, speed):
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

    def now_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    def run(self, max_actions: int) -> CallReport:
        handlers = {
            "InvokeLambdaFunction": self.invoke,
            "UpdateContactAttributes": self.update_attributes,
            "Compare": self.compare,
            "MessageParticipant": self.message,
            "DisconnectParticipant": lambda action: None,
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

        media = params["Media"]
        if media.get("SourceType") != "S3" or media.get("MediaType") != "Audio":
            raise FlowError(f"{name}: Media must have SourceType 'S3' and MediaType 'Audio', got {media!r}")
        url = self.resolve_string(media["Uri"], name)
        if not url:
            self.report.errors.append(f"{name}: the prompt URL {media['Uri']!r} is empty")
            return self.error_branch(action)
        try:
            data = self.fetch_part(url)
            if len(data) >= MAX_PROMPT_BYTES:
                raise ValueError(f"{len(data)} bytes; Connect plays prompts under 50 MB")
            wav = read_connect_wav(data)
            if wav.duration_ms >= MAX_PROMPT_MS:
                raise ValueError(f"{wav.duration_ms:.0f} ms long; Connect plays prompts under 5 minutes")
        except Exception as exc:  # noqa: BLE001 - Connect takes the Error branch and plays nothing
            self.report.errors.append(f"{name}: cannot play {url}: {type(exc).__name__}: {exc}")
            return self.error_branch(action)

        played_ms = self.now_ms()
        if self.last_part_end_ms is None:
            self.report.ttfa_ms = played_ms
        else:
            self.report.gaps_ms.append(played_ms - self.last_part_end_ms)
        time.sleep(wav.duration_ms / self.speed / 1000)
        self.last_part_end_ms = self.now_ms()
        self.report.parts.append({"url": url, "played_ms": played_ms, "duration_ms": wav.duration_ms})
        self.report.audio_ulaw += wav.ulaw
        return action["Transitions"]["NextAction"]

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
        node: Any = {**self.contact_data(), "External": self.external}
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


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)
