"""python -m localcloud: run this project's template on this machine, with no AWS account and no Docker.

    stream --text "..." [--out DIR] [--json]        run one stream, save its parts, print manifest and timeline
    call --text "..." [--out call.wav] [--json]     simulate a phone call through the template's contact flow
    invoke LOGICAL_ID --event FILE [--event FILE]   invoke a function (sam local invoke), or run the state machine,
                                                    with each event in turn, in one local cloud
    flow [--function-arn ARN]                       print the contact flow, ready to import into Connect
    start [--port N]                                serve a local AWS endpoint for the AWS CLI and boto3

Every command takes --parameter-overrides Key=Value ... as `sam deploy` does.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from localcloud import chatbot, faults, phone, runs
from localcloud import cloud as local
from localcloud.template import parse_overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                         help="template parameters, as for sam deploy")
        sub.add_argument("--verbose", action="store_true", help="show the functions' logs and metrics on stderr")
        return sub

    stream = command("stream", "run one stream through the real workflow")
    stream.add_argument("--text", required=True, help="the answer to speak")
    stream.add_argument("--stream-id", default=None, help="default: a new id")
    stream.add_argument("--voice", default=None)
    stream.add_argument("--language", default=None, choices=["auto", "en", "ko"])
    stream.add_argument("--out", type=Path, default=Path("out/stream"), help="folder for the parts (default out/stream)")
    stream.add_argument("--json", action="store_true", help="print one JSON report instead of text")
    stream.add_argument("--fault", action="append", default=[], type=faults.parse, metavar="SPEC",
                        help="make something fail on purpose (repeatable): " + faults.GRAMMAR)

    call = command("call", "simulate a phone call through the template's contact flow")
    asked = call.add_mutually_exclusive_group(required=True)
    asked.add_argument("--text", help="the answer the caller hears (contact attribute AnswerText)")
    asked.add_argument("--question", action="append", help="talk to the chatbot: one question per turn (repeatable)")
    call.add_argument("--chat-url", default="", help="your chatbot (default: a built-in bot on 127.0.0.1)")
    call.add_argument("--language", default=phone.DEFAULT_LANGUAGE, choices=sorted(phone.GOODBYE_UTTERANCES),
                      help="the contact's language, as a Set voice block before the flow sets it: the flow's own "
                           "prompts and the bot's locale follow it (default en-US)")
    call.add_argument("--press", action="append", default=[], metavar="TURN:PART[:MS]",
                      help="press 1 during part PART of the answer to question TURN (from 0): barge-in")
    call.add_argument("--out", type=Path, default=Path("out/call.wav"), help="what the caller heard (default out/call.wav)")
    call.add_argument("--speed", type=float, default=1.0,
                      help="playback speed-up; 1 is real time, more makes waits an upper bound (default 1)")
    call.add_argument("--json", action="store_true", help="print one JSON report instead of text")
    call.add_argument("--fault", action="append", default=[], type=faults.parse, metavar="SPEC",
                      help="make something fail on purpose (repeatable): " + faults.GRAMMAR)

    flow = command("flow", "print the contact flow as Connect imports it")
    flow.add_argument("--function-arn", default="arn:aws:lambda:REGION:ACCOUNT:function:YOUR-ConnectFunction",
                      help="your deployed ConnectFunction ARN (stack output ConnectFunctionArn)")

    invoke = command("invoke", "invoke a function (or run the state machine) of the template with event files")
    invoke.add_argument("function", help="logical id in template.yaml, e.g. ConnectFunction or SynthesisStateMachine")
    invoke.add_argument("--event", type=Path, action="append", required=True,
                        help="event JSON file (see events/); repeat to send several in turn to the same local cloud")

    start = command("start", "serve a local AWS endpoint on 127.0.0.1")
    start.add_argument("--port", type=int, default=4566)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "call" and args.question:
        if not args.chat_url:
            _, _, args.chat_url = chatbot.serve()  # a built-in bot, so the demo needs no outside service
        args.parameter_overrides = [*args.parameter_overrides, f"ChatUrl={args.chat_url}"]
    if not args.verbose:
        # The functions' JSON logs and metrics are what CloudWatch would get; here they would bury the report.
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        logging.getLogger("moto").setLevel(logging.CRITICAL)
    report_out = sys.stdout
    # Whatever the functions print goes to stderr, so stdout holds only the report (and --json stays JSON).
    with contextlib.redirect_stdout(sys.stderr):
        return _run(args, report_out)


def _run(args, out) -> int:
    try:
        overrides = parse_overrides(args.parameter_overrides)
        cloud = local.LocalCloud(overrides=overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "start":
        return _serve(cloud, args.port, out)
    if args.command == "flow":
        return _flow(cloud, args.function_arn, out)
    try:
        with cloud:
            return _commands(cloud, args, out)
    except faults.SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _commands(cloud, args, out) -> int:
    if args.command == "stream":
        return _stream(cloud, args, out)
    if args.command == "call":
        return _call(cloud, args, out)
    return _invoke(cloud, args, out)


def _with_faults(cloud, args, run) -> dict:
    """Run one command's work with the --fault SPECs on, and say in its report which of them fired."""
    with faults.injected(cloud, *args.fault) as injection:
        report = run()
    if args.fault:
        report["faults"] = injection.report()
    return report


def _print(report: dict, describe, args, out):
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else describe(report), file=out)


def _stream(cloud, args, out) -> int:
    report = _with_faults(cloud, args, lambda: runs.run_stream(
        cloud, args.text, stream_id=args.stream_id, voice=args.voice, language=args.language, out_dir=args.out))
    _print(report, runs.describe_stream, args, out)
    return 0 if report["status"] == "complete" else 1


def _call(cloud, args, out) -> int:
    if args.speed <= 0:
        print("error: --speed must be more than 0", file=sys.stderr)
        return 2
    if args.question:
        try:
            presses = [_press(p) for p in args.press]
        except ValueError as error:
            print(f"error: --press {error}", file=sys.stderr)
            return 2
        result = _with_faults(cloud, args, lambda: runs.run_chat_call(
            cloud, args.question, presses=presses, speed=args.speed, out_wav=args.out, language=args.language))
        _print(result, runs.describe_chat_call, args, out)
        return 0 if result["ended_by"] == "EndCall" else 1
    result = _with_faults(cloud, args, lambda: runs.run_call(cloud, args.text, speed=args.speed, out_wav=args.out,
                                                             language=args.language))
    _print(result, runs.describe_call, args, out)
    return 0 if result["final"] and result["status"] == "complete" else 1


def _press(spec: str) -> phone.KeyPress:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"{spec!r} is not TURN:PART or TURN:PART:MS (whole numbers)")
    return phone.KeyPress(turn=int(parts[0]), part=int(parts[1]), after_ms=float(parts[2]) if len(parts) == 3 else 0)


def _flow(cloud, function_arn, out) -> int:
    cloud.template.physical["ConnectFunction"] = {"Ref": function_arn, "Arn": function_arn}
    print(json.dumps(runs.template_flow(cloud.template), indent=2, ensure_ascii=False), file=out)
    return 0


def _invoke(cloud, args, out) -> int:
    """Each event in turn, to a function or (as its execution input) to the state machine: a later event sees
    what an earlier one made (start_stream, then get_next_batch, then stop)."""
    events = []
    for path in args.event:
        try:
            events.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            print(f"error: cannot read event {path}: {error}", file=sys.stderr)
            return 2
    machines = list(cloud.template.resources("AWS::Serverless::StateMachine"))
    if args.function not in cloud.functions and args.function not in machines:
        print(f"error: {args.function} is not a function or state machine in template.yaml; known: "
              f"{', '.join([*cloud.functions, *machines])}", file=sys.stderr)
        return 2
    failed = False
    for event in events:
        if args.function in machines:
            execution = cloud.wait_execution(cloud.start_execution(args.function, event))
            result = {k: execution.get(k) for k in ("status", "output", "error", "cause") if execution.get(k)}
            if "output" in result:
                result["output"] = json.loads(result["output"])
            failed |= execution["status"] != "SUCCEEDED"
        else:
            try:
                result = cloud.invoke(args.function, event)
            except local.FunctionError as error:
                print(json.dumps(error.payload, indent=2), file=sys.stderr)
                return 1
            runs.wait_for_executions(cloud)
        print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    return 1 if failed else 0


def _serve(cloud, port, out) -> int:
    cloud.start(port)
    print(json.dumps({"endpoint": cloud.endpoint, "resources": cloud.template.physical}, indent=2), file=out)
    print(f"local AWS endpoint ready: aws --endpoint-url {cloud.endpoint} ... (Ctrl-C stops)", file=out, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
