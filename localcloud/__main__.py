"""python -m localcloud: run this project's template on this machine, with no AWS account and no Docker.

    stream --text "..." [--out DIR] [--json]        run one stream, save its parts, print manifest and timeline
    invoke FUNCTION_LOGICAL_ID --event FILE         invoke one function with an event (sam local invoke)
    start [--port N]                                serve a local AWS endpoint for the AWS CLI and boto3

Every command takes --parameter-overrides Key=Value ... as `sam deploy` does.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from localcloud import cloud as local
from localcloud import runs
from localcloud.template import parse_overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                         help="template parameters, as for sam deploy")
        return sub

    stream = command("stream", "run one stream through the real workflow")
    stream.add_argument("--text", required=True, help="the answer to speak")
    stream.add_argument("--stream-id", default=None, help="default: a new id")
    stream.add_argument("--voice", default=None)
    stream.add_argument("--language", default=None, choices=["auto", "en", "ko"])
    stream.add_argument("--out", type=Path, default=Path("out/stream"), help="folder for the parts (default out/stream)")
    stream.add_argument("--json", action="store_true", help="print one JSON report instead of text")

    invoke = command("invoke", "invoke a function of the template with an event file")
    invoke.add_argument("function", help="logical id in template.yaml, e.g. ConnectFunction")
    invoke.add_argument("--event", type=Path, required=True, help="event JSON file (see events/)")

    start = command("start", "serve a local AWS endpoint on 127.0.0.1")
    start.add_argument("--port", type=int, default=4566)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.parameter_overrides)
        cloud = local.LocalCloud(overrides=overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "start":
        return _serve(cloud, args.port)
    with cloud:
        if args.command == "stream":
            return _stream(cloud, args)
        return _invoke(cloud, args)


def _stream(cloud, args) -> int:
    report = runs.run_stream(cloud, args.text, stream_id=args.stream_id, voice=args.voice,
                             language=args.language, out_dir=args.out)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(runs.describe_stream(report))
    return 0 if report["status"] == "complete" else 1


def _invoke(cloud, args) -> int:
    try:
        event = json.loads(args.event.read_text())
    except (OSError, ValueError) as error:
        print(f"error: cannot read event {args.event}: {error}", file=sys.stderr)
        return 2
    if args.function not in cloud.functions:
        print(f"error: {args.function} is not a function in template.yaml; known: {', '.join(cloud.functions)}",
              file=sys.stderr)
        return 2
    try:
        print(json.dumps(cloud.invoke(args.function, event), indent=2, ensure_ascii=False))
    except local.FunctionError as error:
        print(json.dumps(error.payload, indent=2), file=sys.stderr)
        return 1
    runs.wait_for_executions(cloud)
    return 0


def _serve(cloud, port) -> int:
    cloud.start(port)
    print(json.dumps({"endpoint": cloud.endpoint, "resources": cloud.template.physical}, indent=2))
    print(f"local AWS endpoint ready: aws --endpoint-url {cloud.endpoint} ... (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
