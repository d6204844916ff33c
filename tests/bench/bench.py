"""`make bench`: time to first audio and everything around it, measured against the alternatives in one run.

    .venv/bin/python tests/bench/bench.py [--quick] [--out out/bench]

On one local cloud (template.yaml on moto, the real workflow, eSpeak), answers of 1, 5, 20 and 60 sentences in
English and Korean are spoken in three modes (tests/bench/modes.py: fanout = this project, sequential = one worker
part after part, whole = one synthesis of the whole answer), each through a simulated phone call running the
template's contact flow. A first pass runs with the latency model on (localcloud/latency.py: production-like
times for every AWS request, Lambda warm and cold starts and the TTS engine), a second with it off (what this
machine itself costs). Also measured: the lower bound of time to first audio, the prompt cache, cold starts (the
import time of each handler module, its package size), chunker and audio-encoding throughput.

Targets are checked as ratios of figures measured in this same run (the machine is shared: absolute times vary
between runs, ratios much less) and printed PASS or MISS. Results: OUT/results.json, OUT/ttfa.svg (time to first
audio vs answer length per mode), OUT/timeline.svg (one 20-sentence call: parts ready vs played).

Playback is fast-forwarded (the phone's `speed`): time to first audio and time until the last part is ready do not
depend on it (nothing plays before the first part), but silence between parts and the number of polling requests
are upper bounds at speed > 1, because the phone asks for the next batch sooner than a real caller would. Whether a
part would be late at real time is derived from its ready time, which does not depend on playback speed.
"""

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"
for path in (ROOT, FUNCTIONS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from localcloud import latency  # noqa: E402
from localcloud import template as cfn  # noqa: E402
from localcloud.cloud import LocalCloud  # noqa: E402
from tests.bench import bench_chunking, modes  # noqa: E402
from tts_stream import audio, chunking, config, engines, manifest, pipeline  # noqa: E402

SIZES = (1, 5, 20, 60)
LANGUAGES = ("en", "ko")
SPEED_ON, SPEED_OFF = 25.0, 50.0
TIMELINE_SENTENCES = 20
COLD_SENTENCES = 5
CACHE_SENTENCES = 5

# Support answers. Every sentence names the call's reference (a fixed-width tag, different for every call) so
# that no part of one call is ever served from the prompt cache to another: each call pays for its own speech.
SENTENCES = {
    "en": (
        "Parcel {tag} left our depot this morning.",
        "Parcel {tag} should reach you by Friday.",
        "The driver of {tag} will call you first.",
        "You can change where {tag} goes in the app.",
        "Nobody needs to sign for parcel {tag}.",
        "If you are out, {tag} goes to a safe place.",
        "We send a photo once {tag} is delivered.",
        "Returning {tag} is free for thirty days.",
        "The receipt for {tag} is in your email.",
        "Thanks for waiting while I checked {tag}.",
    ),
    "ko": (
        "{tag} 소포가 오늘 아침 출발했습니다.",
        "{tag} 소포는 금요일까지 도착합니다.",
        "{tag} 기사님이 먼저 전화합니다.",
        "{tag} 주소는 앱에서 바꿀 수 있어요.",
        "{tag} 소포는 서명이 필요 없습니다.",
        "부재 중이면 {tag} 소포는 문 앞에 둡니다.",
        "{tag} 배송이 끝나면 사진을 보내요.",
        "{tag} 반품은 삼십 일 동안 무료입니다.",
        "{tag} 영수증은 이메일로 보냈어요.",
        "{tag} 확인을 기다려 주셔서 감사합니다.",
    ),
}
_EN_TAG = "BCDFGHJKLMNPRSTVWXZ"
_KO_TAG = "가나다라마바사아자차카타파하"


def tag(language: str, number: int) -> str:
    """The reference of call `number`: two letters (English) or two syllables (Korean), the same width always."""
    letters = _EN_TAG if language == "en" else _KO_TAG
    return letters[number // len(letters) % len(letters)] + letters[number % len(letters)]


def answer(language: str, sentences: int, number: int) -> str:
    """A deterministic answer of `sentences` sentences for call `number`."""
    templates = SENTENCES[language]
    reference = tag(language, number)
    return " ".join(templates[i % len(templates)].format(tag=reference) for i in range(sentences))


class Calls:
    """Numbers the calls of a run, so every call gets its own tag."""

    def __init__(self):
        self.number = 0

    def text(self, language: str, sentences: int) -> str:
        self.number += 1
        return answer(language, sentences, self.number)


def log(message: str):
    print(message, file=sys.stderr, flush=True)


# -- cold start: import time and package size -----------------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def handler_modules(template) -> dict[str, str]:
    """logical id -> handler module of every function in the template."""
    return {logical_id: template.function_properties(logical_id)["Handler"].rsplit(".", 1)[0]
            for logical_id in template.resources("AWS::Serverless::Function")}


def import_time(module: str, runs: int) -> dict:
    """Import `module` in fresh interpreters (`python -X importtime`), as a cold Lambda does; median of `runs`."""
    totals, selfs = [], {}
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_ENDPOINT")}
    env["PYTHONPATH"] = str(FUNCTIONS)
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=FUNCTIONS, env=env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "import failed"}
        for line in done.stderr.splitlines():
            match = _IMPORT_LINE.match(line)
            if not match:
                continue
            own, cumulative, _, name = int(match[1]), int(match[2]), match[3], match[4]
            selfs.setdefault(name, []).append(own)
            if name == module:
                totals.append(cumulative / 1000)
    heaviest = sorted(((statistics.median(v) / 1000, k) for k, v in selfs.items()), reverse=True)[:5]
    return {"median_ms": round(statistics.median(totals), 1), "runs_ms": [round(t, 1) for t in totals],
            "largest_self_ms": {name: round(ms, 1) for ms, name in heaviest}}


def package_sizes(functions: list[str], *, quick: bool) -> dict:
    """Unzipped and zipped size of each function's built package. The full run builds once into
    OUT/sam-build with SAM CLI (cached); otherwise an existing build is used, or the answer is "not built"."""
    built = _build_dir(functions, quick=quick)
    if built is None:
        return {"build": "not built", "functions": {f: "not built" for f in functions}}
    sizes, by_content = {}, {}
    for logical_id in functions:
        folder = built / logical_id
        if not folder.is_dir():
            sizes[logical_id] = "not built (the build predates this function: run `make build`)"
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        fingerprint = tuple((str(p.relative_to(folder)), p.stat().st_size) for p in files)
        if fingerprint not in by_content:
            by_content[fingerprint] = _sizes(folder, files)
        sizes[logical_id] = by_content[fingerprint]
    return {"build": str(built.relative_to(ROOT) if built.is_relative_to(ROOT) else built), "functions": sizes}


def _build_dir(functions: list[str], *, quick: bool) -> Path | None:
    ours, sams = OUT / "sam-build", ROOT / ".aws-sam" / "build"
    sources = [ROOT / "template.yaml", FUNCTIONS / "requirements.txt"]
    newest = max(p.stat().st_mtime for p in sources)

    def fresh(folder: Path) -> bool:
        return folder.is_dir() and (folder / "template.yaml").exists() and \
            (folder / "template.yaml").stat().st_mtime >= newest and all((folder / f).is_dir() for f in functions)

    for folder in (ours, sams):
        if fresh(folder):
            return folder
    sam = ROOT / ".venv-sam" / "bin" / "sam"
    if not quick and sam.exists():
        log("building the functions once with SAM CLI (cached in OUT/sam-cache) to measure package sizes")
        done = subprocess.run([str(sam), "build", "--build-dir", str(ours), "--cache-dir", str(OUT / "sam-cache"),
                               "--template", "template.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "SAM_CLI_TELEMETRY": "0"})
        if done.returncode == 0:
            return ours
        log(f"sam build failed: {done.stderr.strip().splitlines()[-1:]}")
    for folder in (ours, sams):
        if folder.is_dir():
            return folder
    return None


def _sizes(folder: Path, files: list[Path]) -> dict:
    unzipped = sum(p.stat().st_size for p in files)
    zipped = 0
    for p in files:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        zipped += len(compressor.compress(p.read_bytes())) + len(compressor.flush()) + 30 + 46 + 2 * len(p.name)
    top: dict[str, int] = {}
    for p in files:
        head = p.relative_to(folder).parts[0]
        top[head] = top.get(head, 0) + p.stat().st_size
    largest = sorted(top.items(), key=lambda item: -item[1])[:4]
    return {"unzipped_mb": round(unzipped / 1e6, 1), "zipped_mb": round(zipped / 1e6, 1), "files": len(files),
            "largest_mb": {name: round(size / 1e6, 1) for name, size in largest}}


# -- throughput -----------------------------------------------------------------------------------------------

def chunker_throughput(quick: bool) -> dict:
    chunking.split_for_speech(bench_chunking.ENGLISH + bench_chunking.KOREAN)  # compile and import first
    out = {}
    for name, paragraph in (("en", bench_chunking.ENGLISH), ("ko", bench_chunking.KOREAN)):
        for size in ((3_000,) if quick else (3_000, 30_000)):
            text = bench_chunking.sample(paragraph, size)
            ms = bench_chunking.median_ms(text)
            out[f"{name}_{size}"] = {"chars": len(text), "median_ms": round(ms, 2),
                                     "chars_per_s": round(len(text) / ms * 1000)}
    return out


def encoding_throughput(runs: int) -> dict:
    """tts_stream.audio.to_connect_wav on 5 s of 22,050 Hz speech-like audio (a deterministic tone mix)."""
    rate, seconds = 22050, 5
    noise = random.Random(0)
    samples = bytearray()
    for i in range(rate * seconds):
        value = 9000 * _sine(i * 220 / rate) + 4000 * _sine(i * 1330 / rate) + noise.randint(-1500, 1500)
        samples += int(value).to_bytes(2, "little", signed=True)
    pcm = bytes(samples)
    audio.to_connect_wav(pcm, rate)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        audio.to_connect_wav(pcm, rate)
        timings.append((time.perf_counter() - started) * 1000)
    ms = statistics.median(timings)
    return {"audio_s": seconds, "sample_rate": rate, "median_ms": round(ms, 2),
            "x_real_time": round(seconds * 1000 / ms), "input_mb_per_s": round(len(pcm) / 1e6 / (ms / 1000), 1)}


def _sine(turns: float) -> float:
    return math.sin(2 * math.pi * turns)


# -- the lower bound of time to first audio -----------------------------------------------------------------------

def first_part(text: str, settings) -> str:
    return chunking.split_for_speech(text, first_max=settings.first_chunk_max_chars,
                                     target=settings.chunk_target_chars, max_len=settings.chunk_max_chars)[0].strip()


def lower_bound(cloud, model: latency.LatencyModel, part0: str, language: str, settings, runs: int = 5) -> dict:
    """Part 0 synthesized, written to S3, marked ready: nothing can play sooner. Measured, not added up: the engine
    speaks part 0 (eSpeak, encoded to Connect's WAV), one PutObject and one UpdateItem go to this same local cloud,
    all under `model` as the calls are; the median of `runs`. `modeled_ms` is the model's share of it."""
    import boto3

    engine = engines.get_engine("espeak")
    part = {"index": 0, "text": part0, "engine": "espeak", "voice": engine.default_voice(language),
            "engine_settings": {}}
    timings = []
    with latency.install(model, cloud=cloud):
        ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")  # made under the model: they carry its hooks
        for _ in range(runs):
            stream_id = f"bench-bound-{random.getrandbits(48):012x}"
            manifest.begin(ddb, settings.table_name, stream_id, "0" * 64, now_ms=time.time_ns() // 1_000_000,
                           ttl_hours=1)
            started = time.perf_counter()
            wav, _ = pipeline.speak_part(settings, {**part, "stream_id": stream_id})
            s3.put_object(Bucket=settings.bucket_name, Key=config.part_key(stream_id, 0), Body=wav,
                          ContentType="audio/wav")
            manifest.mark_ready(ddb, settings.table_name, stream_id, 0, now_ms=time.time_ns() // 1_000_000)
            timings.append((time.perf_counter() - started) * 1000)
    modeled = model.engine_ms(part0) + model.s3_put_ms + model.ddb_write_ms
    measured = statistics.median(timings)
    return {"ms": round(measured, 1), "modeled_ms": round(modeled, 1), "local_ms": round(measured - modeled, 1),
            "part0_chars": len(part0)}


# -- one pass ---------------------------------------------------------------------------------------------------

def run_pass(cloud, name: str, model, plan: dict, calls: Calls, init_ms: dict) -> dict:
    speed = plan["speed"]
    records, extra = [], {}
    with latency.install(model, cloud=cloud, init_ms=init_ms) as lat:
        if plan.get("cold"):
            lat.make_cold()
            before = dict(lat.cold_starts)
            record = modes.run("fanout", cloud, calls.text("en", COLD_SENTENCES), speed=speed, latency=lat)
            record["cold_starts"] = {k: v - before.get(k, 0) for k, v in lat.cold_starts.items() if v - before.get(k, 0)}
            extra["cold_call"] = _brief(record)
            log(f"[{name}] cold fan-out call, {COLD_SENTENCES} sentences: first audio after {record['ttfa_ms']} ms")
        for mode, sentences in (("fanout", TIMELINE_SENTENCES), ("sequential", 1), ("whole", 1)):
            modes.run(mode, cloud, calls.text("en", sentences), speed=speed, latency=lat)  # warm every function
        for language in plan["languages"]:
            for sentences in plan["sizes"]:
                for rep in range(max(plan["reps"].values())):
                    for mode in plan["modes"]:
                        if rep >= plan["reps"].get(mode, 1):
                            continue
                        text = calls.text(language, sentences)
                        record = modes.run(mode, cloud, text, speed=speed, latency=lat)
                        record.update(language=language, sentences=sentences, chars=len(text), rep=rep)
                        records.append(record)
                        log(f"[{name}] {language} {sentences:>2} sentences {mode:<10} first audio "
                            f"{_num(record['ttfa_ms']):>6} ms  last ready {_num(record['last_ready_ms']):>6} ms  "
                            f"requests {record['requests']:>3}  {record['status']}")
        if plan.get("cache"):
            text = calls.text("en", CACHE_SENTENCES)
            first = modes.run("fanout", cloud, text, speed=speed, latency=lat)
            again = modes.run("fanout", cloud, text, speed=speed, latency=lat)
            extra["prompt_cache"] = {"sentences": CACHE_SENTENCES, "uncached": _brief(first), "cached": _brief(again),
                                     "ttfa_ratio": _ratio(again["ttfa_ms"], first["ttfa_ms"])}
            log(f"[{name}] prompt cache: first audio {first['ttfa_ms']} ms, repeated {again['ttfa_ms']} ms")
        for experiment in plan.get("experiments", ()):
            extra.setdefault("experiments", []).append(run_experiment(cloud, name, experiment, calls, speed, lat))
        if plan.get("timeline_speed"):
            text = calls.text("en", TIMELINE_SENTENCES)
            record = modes.run("fanout", cloud, text, speed=plan["timeline_speed"], latency=lat)
            record.update(language="en", sentences=TIMELINE_SENTENCES, chars=len(text))
            extra["timeline_call"] = record
            log(f"[{name}] timeline call at speed {plan['timeline_speed']:g}: first audio {record['ttfa_ms']} ms")
    return {"model": model.figures(), "speed": speed, "calls": records, **extra}


def run_experiment(cloud, pass_name: str, experiment: dict, calls: Calls, speed: float, lat) -> dict:
    """Fan-out calls with some settings changed (as a changed template parameter would change them), to compare
    with the same answers at the defaults."""
    saved = {key: os.environ.get(key) for key in experiment["env"]}
    os.environ.update(experiment["env"])
    try:
        records = []
        for _ in range(experiment["reps"]):
            record = modes.run("fanout", cloud, calls.text(experiment["language"], experiment["sentences"]),
                               speed=speed, latency=lat)
            records.append(record)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    ttfas = sorted(r["ttfa_ms"] for r in records if r["ttfa_ms"] is not None)
    median = statistics.median(ttfas) if ttfas else None
    chosen = min(records, key=lambda r: abs((r["ttfa_ms"] or 0) - (median or 0)))
    result = {**{k: v for k, v in experiment.items()}, "ttfa_runs_ms": [r["ttfa_ms"] for r in records],
              **_brief(chosen), "late_at_real_time": chosen["late_at_real_time"], "aws_calls": chosen["aws_calls"]}
    log(f"[{pass_name}] experiment {experiment['name']}: first audio {result['ttfa_runs_ms']} ms, last ready "
        f"{result['last_ready_ms']} ms, requests {result['requests']}")
    return result


def _brief(record: dict) -> dict:
    keys = ("ttfa_ms", "last_ready_ms", "parts_total", "engine_calls", "requests", "status", "cold_starts")
    return {key: record[key] for key in keys if key in record}


def _ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


# -- summary and targets -------------------------------------------------------------------------------------------

def summarize(calls: list[dict]) -> dict[tuple, dict]:
    """(language, sentences, mode) -> the figures; with repetitions, the call with the median time to first audio."""
    groups: dict[tuple, list[dict]] = {}
    for call in calls:
        groups.setdefault((call["language"], call["sentences"], call["mode"]), []).append(call)
    out = {}
    for key, group in groups.items():
        ordered = sorted(group, key=lambda c: (c["ttfa_ms"] is None, c["ttfa_ms"] or 0))
        chosen = ordered[(len(ordered) - 1) // 2]
        out[key] = {**{k: v for k, v in chosen.items() if k != "parts"},
                    "ttfa_runs_ms": [c["ttfa_ms"] for c in group],
                    "waiting_ms_max": max(c["waiting_ms_total"] for c in group),
                    "late_parts_max": max(c["late_at_real_time"]["late_parts"] for c in group)}
    return out


def check_targets(on: dict, bounds: dict, plan: dict) -> list[dict]:
    targets = []

    def add(name, passed, measured, threshold, note=""):
        targets.append({"target": name, "result": "PASS" if passed else ("MISS" if passed is not None else "N/A"),
                        "measured": measured, "threshold": threshold, "note": note})

    for language in plan["languages"]:
        one, sixty = on.get((language, 1, "fanout")), on.get((language, 60, "fanout"))
        ratio = _ratio(sixty and sixty["ttfa_ms"], one and one["ttfa_ms"])
        add(f"TTFA(60 sentences) / TTFA(1 sentence), {language}", None if ratio is None else ratio <= 1.25, ratio, 1.25,
            "" if ratio is not None else "60 sentences not measured in this run")
    worst = None
    for (language, sentences, mode), row in on.items():
        if mode != "fanout":
            continue
        bound = bounds[(language, sentences)]["on"]["ms"]
        ratio = _ratio(row["ttfa_ms"], bound)
        if ratio is not None and (worst is None or ratio > worst[0]):
            worst = (ratio, language, sentences)
    if worst:
        add("TTFA / lower bound (latency model on), worst answer", worst[0] <= 1.3, worst[0], 1.3,
            f"{worst[1]}, {worst[2]} sentences")
    for language in plan["languages"]:
        fan, whole, seq = (on.get((language, 20, m)) for m in ("fanout", "whole", "sequential"))
        ratio = _ratio(fan and fan["ttfa_ms"], whole and whole["ttfa_ms"])
        add(f"TTFA(20) fan-out / whole answer, {language}", None if ratio is None else ratio <= 0.2, ratio, 0.2)
        ratio = _ratio(fan and fan["last_ready_ms"], seq and seq["last_ready_ms"])
        add(f"last part ready(20) fan-out / sequential, {language}", None if ratio is None else ratio <= 0.5, ratio, 0.5)
    fanouts = [row for (_, _, mode), row in on.items() if mode == "fanout"]
    late = sum(row["late_parts_max"] for row in fanouts)
    biggest = max((row["sentences"] for row in fanouts), default=0)
    waiting = max((row["waiting_ms_max"] for row in fanouts), default=0)
    add(f"no silence waiting for a part after the first, up to {biggest} sentences (model on)", late == 0,
        f"{late} late parts at real time; waiting at speed {plan['speed']:g}: up to {waiting:.0f} ms", "0 late parts",
        "" if biggest >= 60 else "60 sentences not measured in this run")
    worst = None
    for row in fanouts:
        budget = 3 * row["parts_total"] + 5
        if worst is None or row["requests"] / budget > worst[0]["requests"] / worst[1]:
            worst = (row, budget)
    if worst:
        row, budget = worst
        add("AWS requests per answer of N parts <= 3N + 5 (worst answer)", row["requests"] <= budget,
            f"{row['requests']} for N={row['parts_total']}", budget, f"{row['language']}, {row['sentences']} sentences")
    return targets


# -- charts (plain SVG: no plotting dependency for two line charts) -------------------------------------------------

COLORS = {"fanout": "#1f77b4", "sequential": "#ff7f0e", "whole": "#d62728"}


def ttfa_svg(on: dict, bounds: dict, plan: dict) -> str:
    width, height, left, right, top, bottom = 760, 440, 70, 190, 50, 60
    sizes = [s for s in SIZES if s in plan["sizes"]]
    values = [row["ttfa_ms"] for row in on.values() if row["ttfa_ms"] is not None]
    y_max = _nice(max(values) * 1.1 if values else 1000)
    x_of = {s: left + (width - left - right) * (i / max(1, len(sizes) - 1)) for i, s in enumerate(sizes)}

    def y(ms):
        return top + (height - top - bottom) * (1 - ms / y_max)

    out = [_svg_head(width, height, "Time to first audio vs answer length (latency model on)")]
    out += _y_axis(left, width - right, y, y_max, "ms")
    for s in sizes:
        out.append(f'<text x="{x_of[s]:.0f}" y="{height - bottom + 20}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 15}" text-anchor="middle">'
               'answer length (sentences)</text>')
    legend = 0
    for language, dash in (("en", ""), ("ko", ' stroke-dasharray="6,4"')):
        if language not in plan["languages"]:
            continue
        for mode in plan["modes"]:
            points = [(x_of[s], y(on[(language, s, mode)]["ttfa_ms"])) for s in sizes
                      if (language, s, mode) in on and on[(language, s, mode)]["ttfa_ms"] is not None]
            if not points:
                continue
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[mode]}" stroke-width="2"{dash}/>')
            out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{COLORS[mode]}"/>' for px, py in points]
            out.append(_legend(width - right + 15, top + 18 * legend, COLORS[mode], f"{mode} ({language})", dash))
            legend += 1
        points = [(x_of[s], y(bounds[(language, s)]["on"]["ms"])) for s in sizes if (language, s) in bounds]
        if points:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="#777" stroke-width="1.5" stroke-dasharray="2,3"/>')
            out.append(_legend(width - right + 15, top + 18 * legend, "#777", f"lower bound ({language})", ' stroke-dasharray="2,3"'))
            legend += 1
    out.append("</svg>")
    return "\n".join(out)


def timeline_svg(call: dict, others: dict, speed: float) -> str:
    """One fan-out call: when each part was ready (dot) and when it played (bar); the other modes' ready times for
    an answer of the same length (hollow marks) for comparison."""
    parts = call["parts"]
    rows = len(parts)
    width, left, right, top, row_h = 820, 70, 200, 50, 18
    height = top + rows * row_h + 70
    ends = [p["played_ms"] + p["duration_ms"] / speed for p in parts]
    candidates = ends + [p["ready_ms"] or 0 for p in parts]
    for other in others.values():
        candidates += [p["ready_ms"] or 0 for p in other["parts"]]
    x_max = _nice(max(candidates) * 1.05)

    def x(ms):
        return left + (width - left - right) * ms / x_max

    title = (f"One {call['sentences']}-sentence call (fan-out, latency model on): parts ready vs played"
             + ("" if speed == 1 else f" (playback x{speed:g})"))
    out = [_svg_head(width, height, title)]
    for i in range(6):
        ms = x_max * i / 5
        out.append(f'<line x1="{x(ms):.1f}" y1="{top - 5}" x2="{x(ms):.1f}" y2="{top + rows * row_h}" stroke="#eee"/>')
        out.append(f'<text x="{x(ms):.1f}" y="{top + rows * row_h + 18}" text-anchor="middle">{ms / 1000:.1f}</text>')
    out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 20}" text-anchor="middle">'
               'seconds since the answer was asked for</text>')
    for row, part in enumerate(parts):
        cy = top + row * row_h + row_h / 2
        out.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">part {part["index"]}</text>')
        out.append(f'<rect x="{x(part["played_ms"]):.1f}" y="{cy - 5:.1f}" width="{max(1.0, x(ends[row]) - x(part["played_ms"])):.1f}"'
                   f' height="10" fill="#2ca02c" opacity="0.6"/>')
        if part["ready_ms"] is not None:
            out.append(f'<circle cx="{x(part["ready_ms"]):.1f}" cy="{cy:.1f}" r="4" fill="{COLORS["fanout"]}"/>')
    legend = [(COLORS["fanout"], "fan-out: part ready", "dot"), ("#2ca02c", "fan-out: part playing", "bar")]
    for mode, other in others.items():
        for row, part in enumerate(other["parts"][:rows]):
            if part["ready_ms"] is None:
                continue
            cy = top + row * row_h + row_h / 2
            out.append(f'<rect x="{x(part["ready_ms"]) - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="none"'
                       f' stroke="{COLORS[mode]}" stroke-width="1.5" transform="rotate(45 {x(part["ready_ms"]):.1f} {cy:.1f})"/>')
        legend.append((COLORS[mode], "whole: the answer ready" if mode == "whole" else f"{mode}: part ready",
                       "diamond"))
    for i, (color, label, shape) in enumerate(legend):
        lx, ly = width - right + 15, top + 18 * i
        if shape == "dot":
            out.append(f'<circle cx="{lx + 10}" cy="{ly}" r="4" fill="{color}"/>')
        elif shape == "bar":
            out.append(f'<rect x="{lx}" y="{ly - 5}" width="20" height="10" fill="{color}" opacity="0.6"/>')
        else:
            out.append(f'<rect x="{lx + 6}" y="{ly - 4}" width="8" height="8" fill="none" stroke="{color}" '
                       f'stroke-width="1.5" transform="rotate(45 {lx + 10} {ly})"/>')
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _svg_head(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
            f' font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{width / 2:.0f}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>')


def _y_axis(x0: float, x1: float, y, y_max: float, unit: str) -> list[str]:
    out = []
    for i in range(6):
        value = y_max * i / 5
        out.append(f'<line x1="{x0}" y1="{y(value):.1f}" x2="{x1}" y2="{y(value):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 8}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.0f}</text>')
    out.append(f'<text x="{x0 - 55}" y="{y(y_max / 2):.0f}" transform="rotate(-90 {x0 - 55} {y(y_max / 2):.0f})"'
               f' text-anchor="middle">time to first audio ({unit})</text>')
    return out


def _legend(x: float, y: float, color: str, label: str, dash: str) -> str:
    return (f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>'
            f'<text x="{x + 30}" y="{y + 4}">{escape(label)}</text>')


def _nice(value: float) -> float:
    """A round axis maximum at or above `value`."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


# -- the report ---------------------------------------------------------------------------------------------------

def table(on: dict, off: dict, bounds: dict) -> str:
    header = (f"{'lang':<4} {'sent':>4} {'parts':>5} {'mode':<10} {'TTFA ms':>8} {'model off':>9} {'/bound':>6} "
              f"{'last ready':>10} {'waiting':>7} {'gaps':>6} {'engine':>6} {'requests':>8} {'3N+5':>5}")
    lines = [header, "-" * len(header)]
    for key in sorted(on, key=lambda k: (k[0], k[1], modes.MODES.index(k[2]))):
        row = on[key]
        language, sentences, mode = key
        other = off.get(key) if off else None
        bound = bounds.get((language, sentences), {}).get("on", {}).get("ms")
        ratio = _ratio(row["ttfa_ms"], bound) if mode == "fanout" else None
        lines.append(
            f"{language:<4} {sentences:>4} {row['parts_total'] or 0:>5} {mode:<10} {_num(row['ttfa_ms']):>8} "
            f"{_num(other and other['ttfa_ms']):>9} {_num(ratio, 2):>6} {_num(row['last_ready_ms']):>10} "
            f"{_num(row['waiting_ms_total']):>7} {_num(row['gaps_ms_total']):>6} {row['engine_calls']:>6} "
            f"{row['requests']:>8} {3 * (row['parts_total'] or 0) + 5:>5}")
    return "\n".join(lines)


def _num(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _key(key: tuple) -> str:
    return "/".join(str(k) for k in key)


OUT = ROOT / "out" / "bench"


def main(argv=None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute subset (targets on 60 sentences: N/A)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default out/bench)")
    args = parser.parse_args(argv)
    OUT = args.out.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    started = time.monotonic()
    quick = args.quick
    on_plan = {"languages": LANGUAGES, "sizes": (1, 5, 20) if quick else SIZES, "modes": modes.MODES,
               "reps": {"fanout": 1 if quick else 5}, "speed": SPEED_ON, "cold": True, "cache": True,
               "timeline_speed": None if quick else 1.0,
               "experiments": [
                   {"name": "MapMaxConcurrency 3", "env": {"MAP_MAX_CONCURRENCY": "3"}, "language": "en",
                    "sentences": 20 if quick else 60, "reps": 1 if quick else 3},
                   {"name": "PromptCache false", "env": {"PROMPT_CACHE": "false"}, "language": "en",
                    "sentences": 5, "reps": 1 if quick else 3},
                   {"name": "POLL_INTERVAL_MS 20", "env": {"POLL_INTERVAL_MS": "20"}, "language": "en",
                    "sentences": 5, "reps": 1 if quick else 3},
               ]}
    off_plan = {"languages": ("en",) if quick else LANGUAGES, "sizes": (1, 20) if quick else SIZES,
                "modes": ("fanout",) if quick else modes.MODES, "reps": {"fanout": 1}, "speed": SPEED_OFF}

    template = cfn.load(ROOT / "template.yaml")
    functions = handler_modules(template)
    log("measuring the import time of each handler module in fresh interpreters")
    imports = {module: import_time(module, 1 if quick else 3) for module in sorted(set(functions.values()))}
    packages = package_sizes(sorted(functions), quick=quick)
    log("measuring chunker and audio-encoding throughput")
    throughput = {"chunker": chunker_throughput(quick), "encoding": encoding_throughput(5 if quick else 15)}

    model = latency.LatencyModel()
    calls = Calls()
    # Stdout carries the report only: whatever the functions print goes to stderr.
    with contextlib.redirect_stdout(sys.stderr), LocalCloud() as cloud:
        settings = config.load()
        for module in set(functions.values()):
            importlib.import_module(module)  # in-process imports are not what a call should pay for: init_ms is
        init_ms = {cloud.functions[lid].name: imports[module].get("median_ms", 0.0) for lid, module in functions.items()
                   if lid in cloud.functions}
        bounds = {}
        for language in on_plan["languages"]:
            for sentences in on_plan["sizes"]:
                part0 = first_part(answer(language, sentences, 0), settings)
                bounds[(language, sentences)] = {
                    "on": lower_bound(cloud, model, part0, language, settings),
                    "off": lower_bound(cloud, latency.LatencyModel.off(), part0, language, settings)}
        passes = {"on": run_pass(cloud, "model on", model, on_plan, calls, init_ms),
                  "off": run_pass(cloud, "model off", latency.LatencyModel.off(), off_plan, calls, {})}

    on, off = summarize(passes["on"]["calls"]), summarize(passes["off"]["calls"])
    targets = check_targets(on, bounds, on_plan)
    timeline = passes["on"].get("timeline_call") or next(
        (c for c in passes["on"]["calls"] if c["mode"] == "fanout" and c["language"] == "en"
         and c["sentences"] == TIMELINE_SENTENCES), None)
    others = {mode: next(c for c in passes["on"]["calls"] if c["mode"] == mode and c["language"] == "en"
                         and c["sentences"] == TIMELINE_SENTENCES) for mode in ("sequential", "whole")
              if any(c["mode"] == mode and c["sentences"] == TIMELINE_SENTENCES for c in passes["on"]["calls"])}
    (OUT / "ttfa.svg").write_text(ttfa_svg(on, bounds, on_plan))
    if timeline:
        (OUT / "timeline.svg").write_text(timeline_svg(timeline, others, timeline["speed"]))
    results = {
        "quick": quick,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "latency_model": {"figures": model.figures(), "sources": latency.SOURCES},
        "plans": {"on": on_plan, "off": off_plan},
        "lower_bounds": {_key(k): v for k, v in bounds.items()},
        "summary": {"on": {_key(k): v for k, v in on.items()}, "off": {_key(k): v for k, v in off.items()}},
        "targets": targets,
        "cold_start": {"import_ms": imports, "handler_modules": functions, "packages": packages,
                       "cold_call": passes["on"].get("cold_call")},
        "prompt_cache": passes["on"].get("prompt_cache"),
        "experiments": passes["on"].get("experiments"),
        "throughput": throughput,
        "passes": passes,
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str))
    print(report(results, on, off, bounds, targets))
    return 0


def report(results: dict, on: dict, off: dict, bounds: dict, targets: list[dict]) -> str:
    lines = [f"connect-tts-stream bench ({'quick' if results['quick'] else 'full'}), {results['elapsed_s']} s, "
             f"{results['machine']['cpus']} CPUs",
             f"latency model on: speed x{results['plans']['on']['speed']:g} (gaps and request counts are upper bounds "
             "at speed > 1); 'model off' = the same call without modeled latency (this machine's own cost)", "",
             table(on, off, bounds), ""]
    cold = results["cold_start"]
    if cold.get("cold_call"):
        lines.append(f"cold start: fan-out call with every function cold: first audio {cold['cold_call']['ttfa_ms']} ms "
                     f"({cold['cold_call'].get('cold_starts')})")
    for module, measured in cold["import_ms"].items():
        heavy = ", ".join(f"{k} {v:.0f}" for k, v in list(measured.get("largest_self_ms", {}).items())[:3])
        lines.append(f"  import {module}: {measured.get('median_ms', measured.get('error'))} ms (largest own: {heavy})")
    for logical_id, size in cold["packages"]["functions"].items():
        text = size if isinstance(size, str) else f"{size['unzipped_mb']} MB unzipped, {size['zipped_mb']} MB zipped"
        lines.append(f"  package {logical_id}: {text}")
    cache = results.get("prompt_cache")
    if cache:
        lines.append(f"prompt cache: first audio {cache['uncached']['ttfa_ms']} ms uncached, {cache['cached']['ttfa_ms']} ms "
                     f"repeated (x{cache['ttfa_ratio']}); engine calls {cache['uncached']['engine_calls']} -> "
                     f"{cache['cached']['engine_calls']}")
    chunker = results["throughput"]["chunker"]
    lines.append("chunker: " + ", ".join(f"{k} {v['median_ms']} ms ({v['chars_per_s']:,} chars/s)" for k, v in chunker.items()))
    enc = results["throughput"]["encoding"]
    lines.append(f"audio encoding: 5 s of 22,050 Hz in {enc['median_ms']} ms (x{enc['x_real_time']} real time)")
    for experiment in results.get("experiments") or []:
        base = on.get((experiment["language"], experiment["sentences"], "fanout"))
        lines.append(f"experiment {experiment['name']} ({experiment['language']}, {experiment['sentences']} sentences): "
                     f"first audio {experiment['ttfa_runs_ms']} ms vs {base and base['ttfa_runs_ms']} at defaults; "
                     f"last ready {experiment['last_ready_ms']} vs {base and base['last_ready_ms']} ms; requests "
                     f"{experiment['requests']} vs {base and base['requests']}; min slack at real time "
                     f"{experiment['late_at_real_time']['min_slack_ms']} vs "
                     f"{base and base['late_at_real_time']['min_slack_ms']} ms")
    lines.append("")
    for target in targets:
        note = f" ({target['note']})" if target["note"] else ""
        lines.append(f"{target['result']:<4}  {target['target']}: {target['measured']} (target {target['threshold']}){note}")
    lines.append(f"\nresults: {OUT}/results.json, {OUT}/ttfa.svg, {OUT}/timeline.svg")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
