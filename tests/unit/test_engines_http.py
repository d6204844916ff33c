"""The http engine against a real TTS server on 127.0.0.1 (localcloud.tts_server) speaking eSpeak NG audio.

Faults are the server's: error statuses, delays, slow or malformed bodies, dropped connections.
"""

import audioop
import io
import shutil
import ssl
import struct
import subprocess
import time
import uuid
import wave

import boto3
import pytest
from botocore.stub import Stubber

from localcloud import tts_server
from tests.loopback import free_port, unanswered_port
from tts_stream import config, engines, pipeline
from tts_stream.audio import read_connect_wav, rms_dbfs, to_connect_wav, ulaw_to_pcm16
from tts_stream.engines import EspeakEngine, HttpEngine, get_engine
from tts_stream.errors import InvalidInput, PermanentSynthesisError, RetryableError
from tts_stream.secrets import read_secret

TEXT = "Your order shipped this morning."
TOKEN = "Bearer t0ken-for-tests"


@pytest.fixture(scope="module")
def source_seconds() -> float:
    speech = EspeakEngine().synthesize(TEXT, "en-us")
    return len(speech.pcm16) / 2 / speech.sample_rate


@pytest.fixture
def serve():
    """Start TTS servers for one test; every one is stopped afterwards."""
    started = []

    def start(**options):
        server, url = tts_server.serve(**options)
        started.append(server)
        return server, url

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(serve):
    return serve()


def wav_bytes(pcm: bytes, rate: int = 22050, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def riff(tag: int, bits: int, data: bytes, rate: int = 22050, data_size: int | None = None) -> bytes:
    """A mono WAV with any format tag and bit depth, and optionally a data size that is not the real one."""
    block = bits // 8
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * block, block, bits)
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunked_wav(*chunks: tuple[bytes, bytes]) -> bytes:
    """A RIFF WAVE of these (id, payload) chunks in this order, an odd-sized one padded as RIFF requires."""
    body = b"WAVE" + b"".join(cid + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)
                              for cid, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_fmt(channels: int = 1, rate: int = 16000) -> bytes:
    return struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)


def extensible_fmt(sub_tag: int, bits: int = 16, rate: int = 16000, length: int = 40) -> bytes:
    """WAVE_FORMAT_EXTENSIBLE's fmt chunk (as ffmpeg and many servers write): the real format tag starts its
    sub-format GUID, 24 bytes in. `length` below 40 cuts it short."""
    guid = struct.pack("<H", sub_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * bits // 8, bits // 8, bits, 22, bits, 4) + guid
    return fmt[:length]


def seconds_of(speech) -> float:
    return len(speech.pcm16) / 2 / speech.sample_rate


@pytest.mark.parametrize("response", tts_server.RESPONSES)
@pytest.mark.parametrize("rate", [22050, 24000])
def test_speech_from_the_server_becomes_a_connect_wav_as_long_as_the_source(serve, source_seconds, rate, response):
    # Given a TTS server sending eSpeak audio at this rate in this form
    server, url = serve(sample_rate=rate, response=response)

    # When a part is synthesized through it
    speech = HttpEngine(url).synthesize(TEXT, "en")

    # Then the engine read the server's rate, and the part encodes to an 8 kHz u-law WAV as long as the speech
    assert speech.sample_rate == rate
    assert seconds_of(speech) == pytest.approx(source_seconds, abs=0.1)
    wav = read_connect_wav(to_connect_wav(speech.pcm16, speech.sample_rate))
    assert (wav.format_tag, wav.sample_rate, wav.channels) == (7, 8000, 1)
    assert wav.duration_ms / 1000 == pytest.approx(source_seconds, abs=0.1)
    assert rms_dbfs(ulaw_to_pcm16(wav.ulaw)) > -35
    # And the server was asked exactly for the text and voice, once
    assert [request.json for request in server.requests] == [{"text": TEXT, "voice": "en"}]


def test_korean_text_reaches_the_server_unchanged(server):
    _, url = server
    text = "주문하신 상품이 오늘 아침에 발송되었습니다."
    speech = HttpEngine(url).synthesize(text, "ko")
    assert seconds_of(speech) > 1.0
    assert server[0].requests[0].json == {"text": text, "voice": "ko"}


def test_the_server_delaying_past_the_read_timeout_is_retryable_and_quick(server):
    # Given a server that takes three seconds to answer
    tts, url = server
    tts.inject(tts_server.delay(3.0))

    # When the engine waits at most a quarter of a second
    started = time.monotonic()
    with pytest.raises(RetryableError, match="did not answer within 0.25 s"):
        HttpEngine(url, read_timeout_s=0.25).synthesize(TEXT, "en")

    # Then it gives up at its read timeout, not at the server's pace
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("stall", [tts_server.trickle(pieces=5, interval_s=0.6),
                                   tts_server.slow_headers(lines=5, interval_s=0.6)], ids=["audio", "headers"])
def test_the_read_timeout_bounds_the_whole_answer_not_each_wait(server, stall):
    # Given a server that sends its audio (or, before it, its headers) in five pieces 0.6 s apart: no single wait
    # reaches 0.8 s. http.client reads the status line and headers itself, each read with its own timeout.
    tts, url = server
    tts.inject(stall)

    # When the engine allows 0.8 s for the answer
    started = time.monotonic()
    with pytest.raises(RetryableError, match="did not answer within 0.8 s"):
        HttpEngine(url, read_timeout_s=0.8).synthesize(TEXT, "en")

    # Then it gives up at 0.8 s, long before the last piece would have arrived (2.4 s or later)
    assert time.monotonic() - started < 1.6


def test_headers_arriving_slowly_within_the_read_timeout_are_spoken(server, source_seconds):
    tts, url = server
    tts.inject(tts_server.slow_headers(lines=3, interval_s=0.05))
    speech = HttpEngine(url, read_timeout_s=2.0).synthesize(TEXT, "en")
    assert seconds_of(speech) == pytest.approx(source_seconds, abs=0.1)


def test_audio_trickling_in_within_the_read_timeout_is_spoken(server, source_seconds):
    tts, url = server
    tts.inject(tts_server.trickle(pieces=4, interval_s=0.05))
    speech = HttpEngine(url, read_timeout_s=2.0).synthesize(TEXT, "en")
    assert seconds_of(speech) == pytest.approx(source_seconds, abs=0.1)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_overload_and_server_errors_are_retryable_with_the_servers_message(server, status):
    # Given the server answers with an error a later attempt may not get
    tts, url = server
    tts.inject(tts_server.status(status, "model is warming up"))

    # When a part is synthesized
    # Then the workflow will retry it; the message has the status and the server's words
    with pytest.raises(RetryableError, match=f"answered {status} .*: model is warming up: try again"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_a_huge_error_page_still_gives_its_first_words_and_is_not_read_whole(server):
    # Given a server answering 503 with a 1 MB error page
    tts, url = server
    tts.inject(tts_server.status(503, "upstream overloaded. " + "x" * 1_000_000))

    # When a part is synthesized, then the message still carries the page's first words
    with pytest.raises(RetryableError, match="answered 503 .*: upstream overloaded. xxx"):
        HttpEngine(url).synthesize(TEXT, "en")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 302])
def test_other_refusals_are_permanent_with_the_servers_message(server, status):
    tts, url = server
    tts.inject(tts_server.status(status, "voice 'nobody' is not installed"))
    message = f"refused the part with {status} .*voice 'nobody' is not installed"
    with pytest.raises(PermanentSynthesisError, match=message):
        HttpEngine(url).synthesize(TEXT, "en")


def test_an_unknown_voice_is_refused_by_the_server_and_permanent(server):
    # Given the reference server, which answers 400 for a voice eSpeak does not have
    _, url = server

    # When a part asks for such a voice
    # Then it fails for good, carrying the server's explanation
    with pytest.raises(PermanentSynthesisError, match="400 Bad Request.*unknown eSpeak NG voice 'xx-nowhere'"):
        HttpEngine(url).synthesize(TEXT, "xx-nowhere")


def test_the_servers_error_body_is_cut_to_200_characters_and_never_repeats_the_text(server):
    tts, url = server
    tts.inject(tts_server.status(400, f"cannot say {TEXT!r}; " + "x" * 1000))
    with pytest.raises(PermanentSynthesisError) as failure:
        HttpEngine(url).synthesize(TEXT, "en")
    message = str(failure.value)
    assert "order shipped" not in message
    assert "<text>" in message
    assert "x" * 150 in message and "x" * 200 not in message


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("empty", "the body is empty"),
        ("not-wav", "not a WAV file"),
        ("odd-bytes", "3 bytes is not a whole number of 16-bit mono samples"),
        ("html", "content type 'text/html' is not audio"),
        ("no-rate", "X-Sample-Rate header of application/octet-stream is missing"),
        ("bad-rate", "sample rate 11025 Hz is not supported"),
    ],
)
def test_a_malformed_answer_is_permanent_naming_the_problem(server, kind, problem):
    # Given the server answers 200 with a body no one can play
    tts, url = server
    tts.inject(tts_server.malformed(kind))

    # When a part is synthesized
    # Then it fails for good, and the message says what was wrong with the answer
    with pytest.raises(PermanentSynthesisError, match=f"sent unusable audio: .*{problem}"):
        HttpEngine(url).synthesize(TEXT, "en")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (tts_server.body(wav_bytes(b"\x80" * 2000, width=1), "audio/wav"), "8-bit PCM: send 16-bit PCM"),
        (tts_server.body(riff(3, 32, b"\x00" * 4000), "audio/x-wav"), "32-bit float audio: send 16-bit PCM"),
        (tts_server.body(riff(7, 8, b"\xff" * 4000), "audio/wav"), "u-law audio"),
        (tts_server.body(riff(1, 16, b"\x00" * 400, data_size=4000), "audio/wav"),
         "WAV is truncated: its data chunk declares 4000 bytes but 400 arrived"),
        (tts_server.body(b"\x00" * 400, "audio/L16"), "rate parameter of audio/L16 is missing"),
        (tts_server.body(b"\x00" * 400, "application/octet-stream", X_Sample_Rate="fast"),
         "X-Sample-Rate header of application/octet-stream is 'fast': give a whole number"),
        (tts_server.body(b"\x00" * 400, "audio/L16; rate=fast"), "rate parameter of audio/L16 is 'fast'"),
        (tts_server.body(b"\x00" * 600, "audio/L16; rate=16000; channels=3"), "3 channels: send mono"),
        (tts_server.body(b"\x00" * 400), "no Content-Type"),
        (tts_server.body(wav_bytes(b"\x00" * 600, channels=3), "audio/wav"), "3 channels: send mono"),
        (tts_server.body(riff(1, 16, b""), "audio/wav"), "the audio holds no samples"),
        (tts_server.body(chunked_wav((b"fmt ", pcm_fmt(channels=2)), (b"data", b"\x00" * 3998)), "audio/wav"),
         "3998 bytes is not a whole number of 16-bit stereo samples"),
        (tts_server.body(chunked_wav((b"fmt ", pcm_fmt())), "audio/wav"), "the WAV has no 'data' chunk"),
        (tts_server.body(chunked_wav((b"data", b"\x00" * 400), (b"fmt ", pcm_fmt())), "audio/wav"),
         "no complete 'fmt ' chunk before its audio"),
        (tts_server.body(chunked_wav((b"fmt ", pcm_fmt()[:14]), (b"data", b"\x00" * 400)), "audio/wav"),
         "no complete 'fmt ' chunk before its audio"),
        (tts_server.body(chunked_wav((b"fmt ", extensible_fmt(3, bits=32)), (b"data", b"\x00" * 400)), "audio/wav"),
         "32-bit float audio: send 16-bit PCM"),
        (tts_server.body(chunked_wav((b"fmt ", extensible_fmt(1, length=24)), (b"data", b"\x00" * 400)),
                         "audio/wav"), "format tag 65534"),
    ],
    ids=["8-bit-wav", "float-wav", "ulaw-wav", "truncated-wav", "l16-without-rate", "octet-bad-rate",
         "l16-bad-rate", "l16-three-channels", "no-content-type", "three-channel-wav", "wav-without-samples",
         "stereo-wav-cut-mid-frame",
         "wav-without-data", "wav-data-before-fmt", "wav-short-fmt", "extensible-float-wav",
         "extensible-wav-cut-before-its-sub-format"],
)
def test_audio_in_a_form_we_do_not_take_is_permanent(server, answer, problem):
    tts, url = server
    tts.inject(answer)
    with pytest.raises(PermanentSynthesisError, match=problem):
        HttpEngine(url).synthesize(TEXT, "en")


def test_stereo_wav_is_mixed_down_to_mono(server):
    # Given a server answering with a stereo WAV at 16 kHz, one second long
    tts, url = server
    frame = struct.pack("<hh", 1000, 3000)
    tts.inject(tts_server.body(wav_bytes(frame * 16000, rate=16000, channels=2), "audio/wav"))

    # When a part is synthesized
    speech = HttpEngine(url).synthesize(TEXT, "en")

    # Then it is one second of mono, each sample the mean of its two channels
    assert (speech.sample_rate, len(speech.pcm16)) == (16000, 32000)
    assert set(struct.iter_unpack("<h", speech.pcm16)) == {(2000,)}


def test_an_extensible_wav_of_16_bit_pcm_is_spoken_skipping_chunks_it_does_not_know(server):
    # Given a WAVE_FORMAT_EXTENSIBLE file of 16-bit PCM with a chunk of its writer's own (odd-sized, so padded)
    # before its audio
    tts, url = server
    samples = struct.pack("<h", 1200) * 16000
    wav = chunked_wav((b"fmt ", extensible_fmt(1)), (b"note", b"tts"), (b"data", samples))
    tts.inject(tts_server.body(wav, "audio/wav"))

    # When a part is synthesized, then its samples and rate are the file's
    speech = HttpEngine(url).synthesize(TEXT, "en")
    assert (speech.sample_rate, speech.pcm16) == (16000, samples)


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF, 0x7FFFF000], ids=["zero", "all-ones", "sox-and-espeak-ng"])
def test_a_wav_streamed_with_an_unknown_length_is_read_to_the_end(server, placeholder):
    # Given a streaming writer's WAV: the data chunk's size is a placeholder, not the real length
    tts, url = server
    tts.inject(tts_server.body(riff(1, 16, b"\x01\x00" * 24000, rate=24000, data_size=placeholder), "audio/wave"))

    # When it is synthesized, then all of it is used
    speech = HttpEngine(url).synthesize(TEXT, "en")
    assert (speech.sample_rate, len(speech.pcm16)) == (24000, 48000)


@pytest.mark.parametrize("content_type, headers", [("application/octet-stream", {"X_Sample_Rate": "16000"}),
                                                   ("audio/L16; rate=16000", {})], ids=["octet-stream", "l16"])
def test_a_whole_wav_sent_as_raw_audio_is_read_as_the_wav_it_is(server, content_type, headers):
    # Given a server that labels its WAV files as raw PCM: their 44-byte header would play as a click
    tts, url = server
    samples = b"".join(struct.pack("<h", (i % 200 - 100) * 100) for i in range(16000))
    tts.inject(tts_server.body(wav_bytes(samples, rate=16000), content_type, **headers))

    # When a part is synthesized, then its samples are the file's audio, without its header
    speech = HttpEngine(url).synthesize(TEXT, "en")
    assert (speech.sample_rate, speech.pcm16) == (16000, samples)


@pytest.mark.parametrize("sizes", ["known", "unknown"])
def test_wav_files_sent_one_after_another_are_spoken_as_one_part(server, sizes):
    # Given a server that streams a WAV file a sentence, back to back in one answer
    tts, url = server
    first, second = b"\x01\x00" * 8000, b"\x02\x00" * 4000
    placeholder = 0xFFFFFFFF if sizes == "unknown" else None
    tts.inject(tts_server.body(riff(1, 16, first, rate=16000, data_size=placeholder)
                               + riff(1, 16, second, rate=16000, data_size=placeholder), "audio/wav"))

    # When a part is synthesized, then it holds both, and neither header
    speech = HttpEngine(url).synthesize(TEXT, "en")
    assert (speech.sample_rate, speech.pcm16) == (16000, first + second)


def test_wav_files_of_different_formats_in_one_answer_are_permanent(server):
    tts, url = server
    tts.inject(tts_server.body(riff(1, 16, b"\x01\x00" * 800, rate=16000) + riff(1, 16, b"\x01\x00" * 800,
                                                                                  rate=22050), "audio/wav"))
    with pytest.raises(PermanentSynthesisError, match="WAV files of different formats .* at 16000 Hz, then 1 at 22050"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_compressed_audio_is_permanent_and_says_so(server):
    tts, url = server
    tts.inject(tts_server.body(b"\x1f\x8b\x08\x00" + b"\x00" * 100, "audio/wav", Content_Encoding="gzip"))
    with pytest.raises(PermanentSynthesisError, match="sent its audio with Content-Encoding gzip: send it uncompressed"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_audio_over_the_size_limit_is_permanent(server, monkeypatch):
    # Given a limit far below one spoken sentence
    tts, url = server
    monkeypatch.setattr(engines, "HTTP_MAX_AUDIO_BYTES", 1000)

    # When the server sends the sentence, then the part fails for good, naming the limit
    with pytest.raises(PermanentSynthesisError, match="more than 1000 bytes of audio"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_audio_cut_off_before_its_content_length_is_retryable_never_a_short_part(server):
    # Given a server whose connection closes after a quarter of the audio it announced
    tts, url = server
    tts.inject(tts_server.cut(0.25))
    # Then the part is not spoken from what arrived: it is tried again
    with pytest.raises(RetryableError, match="IncompleteRead"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_l16_is_read_in_network_byte_order_as_rfc_2586_defines_it(serve):
    # Given the same speech sent as audio/L16 (big-endian) and as application/octet-stream (little-endian)
    l16, l16_url = serve(sample_rate=22050, response="l16")
    octet, octet_url = serve(sample_rate=22050, response="octet")
    big = HttpEngine(l16_url).synthesize(TEXT, "en").pcm16
    little = HttpEngine(octet_url).synthesize(TEXT, "en").pcm16
    # Then both decode to the same speech (eSpeak varies a few samples between runs): as long, and as loud; read in
    # the wrong byte order, speech turns into noise about six times louder
    assert len(big) == pytest.approx(len(little), rel=0.01)
    assert audioop.rms(big, 2) == pytest.approx(audioop.rms(little, 2), rel=0.2)


def test_l16_marked_little_endian_is_read_as_sent(server):
    # Given a server sending little-endian samples and saying so (as some speech APIs do)
    tts, url = server
    samples = struct.pack("<4h", 1000, -1000, 2000, -2000) * 50
    tts.inject(tts_server.body(samples, "audio/L16; rate=8000; endianness=little-endian"))
    # Then they are taken as they are
    assert HttpEngine(url).synthesize(TEXT, "en").pcm16 == samples


def test_a_dropped_connection_is_retryable(server):
    tts, url = server
    tts.inject(tts_server.drop())
    with pytest.raises(RetryableError, match="RemoteDisconnected"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_no_server_listening_is_retryable_at_once():
    # Given a port nothing listens on
    url = f"http://127.0.0.1:{free_port()}/synthesize"

    # When a part is synthesized
    started = time.monotonic()
    with pytest.raises(RetryableError, match="could not connect to TTS server .*Connection refused"):
        HttpEngine(url).synthesize(TEXT, "en")

    # Then the refusal is reported without waiting for a timeout
    assert time.monotonic() - started < 0.5


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, as (certificate file, key file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_speaks_when_the_servers_certificate_is_trusted(serve, certificate, monkeypatch):
    # Given a TTS server on https whose certificate the function trusts
    _, url = serve(tls=certificate)
    monkeypatch.setattr(engines, "_tls_context", lambda: ssl.create_default_context(cafile=certificate[0]))

    # When a part is synthesized, then it arrives over TLS
    assert url.startswith("https://")
    assert seconds_of(HttpEngine(url).synthesize(TEXT, "en")) > 1.0


def test_https_to_an_untrusted_certificate_is_permanent(serve, certificate):
    # Given a TTS server on https with a self-signed certificate no system CA vouches for
    _, url = serve(tls=certificate)

    # When a part is synthesized, then it fails for good: retrying cannot make the certificate trusted
    with pytest.raises(PermanentSynthesisError, match="has a certificate this function cannot trust"):
        HttpEngine(url).synthesize(TEXT, "en")


def test_the_authorization_header_reaches_the_server_when_configured(serve):
    # Given a server that requires a bearer token
    tts, url = serve(auth=TOKEN)

    # When the engine is given that header value
    speech = HttpEngine(url, auth_header=TOKEN).synthesize(TEXT, "en")

    # Then the server received it and spoke
    assert speech.pcm16
    assert tts.requests[0].headers["Authorization"] == TOKEN


def test_no_authorization_header_is_sent_without_a_secret(server):
    tts, url = server
    HttpEngine(url).synthesize(TEXT, "en")
    assert "Authorization" not in tts.requests[0].headers


def test_a_wrong_token_is_permanent_and_the_token_is_not_in_the_message(serve):
    _, url = serve(auth=TOKEN)
    with pytest.raises(PermanentSynthesisError, match="401") as failure:
        HttpEngine(url, auth_header="Bearer wrong-t0ken").synthesize(TEXT, "en")
    assert "t0ken" not in str(failure.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Bearer abc\r\nX-Injected: 1", "characters an HTTP header cannot carry"),
        ('{"Authorization": "Bearer abc"}', "holds JSON"),
        ("  ", "is empty"),
    ],
    ids=["line-break", "json", "blank"],
)
def test_an_unusable_auth_value_is_permanent_sends_nothing_and_is_not_echoed(server, value, problem):
    tts, url = server
    with pytest.raises(PermanentSynthesisError, match=problem) as failure:
        HttpEngine(url, auth_header=value).synthesize(TEXT, "en")
    assert "abc" not in str(failure.value)
    assert tts.request_count == 0


def test_get_engine_sends_the_secrets_value_as_the_authorization_header(serve):
    # Given the header value stored in Secrets Manager (read once here through a stubbed client, then cached)
    name = f"tts/auth-{uuid.uuid4().hex[:8]}"
    sm = boto3.client("secretsmanager", region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    with Stubber(sm) as stubber:
        stubber.add_response("get_secret_value", {"Name": name, "SecretString": TOKEN}, {"SecretId": name})
        read_secret(name, secretsmanager=sm)
    tts, url = serve(auth=TOKEN)
    settings = config.load({"TTS_ENGINE": "http", "TTS_URL": url, "TTS_AUTH_SECRET": name})

    # When the configured engine speaks a part
    get_engine("http", settings).synthesize(TEXT, "en")

    # Then the server got the secret's value as the Authorization header
    assert tts.requests[0].headers["Authorization"] == TOKEN


def test_a_server_that_does_not_take_the_connection_in_time_is_retryable_after_the_connect_setting():
    # Given a server whose accept queue is full: the kernel leaves new connections unanswered
    with unanswered_port() as port:
        settings = config.load({"TTS_URL": f"http://127.0.0.1:{port}/synthesize", "TTS_CONNECT_TIMEOUT_MS": "300"})

        # When a part is synthesized with TtsConnectTimeoutMs 300
        started = time.monotonic()
        with pytest.raises(RetryableError, match="could not connect to TTS server .* within 0.3 s: try again"):
            get_engine("http", settings).synthesize(TEXT, "en")

    # Then the workflow may try again as soon as the connect timeout is over
    assert time.monotonic() - started < 1.0


def test_the_urls_path_and_query_string_reach_the_server(serve):
    tts, url = serve()
    HttpEngine(url + "?model=fast&lang=en").synthesize(TEXT, "en")
    HttpEngine(url).synthesize(TEXT, "en")
    assert [request.path for request in tts.requests] == ["/synthesize?model=fast&lang=en", "/synthesize"]


@pytest.mark.parametrize("timeouts", [{"connect_timeout_s": 0}, {"read_timeout_s": -1},
                                      {"read_timeout_s": True}, {"connect_timeout_s": "2"}])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_invalid_input(timeouts):
    (label, value), = timeouts.items()
    with pytest.raises(InvalidInput, match=f"TTS server {label.split('_')[0]} timeout {value!r} must be a positive"):
        HttpEngine("http://127.0.0.1:9/synthesize", **timeouts)


def test_get_engine_applies_the_read_timeout_setting(server):
    tts, url = server
    tts.inject(tts_server.delay(3.0))
    settings = config.load({"TTS_URL": url, "TTS_READ_TIMEOUT_MS": "300"})
    started = time.monotonic()
    with pytest.raises(RetryableError, match="did not answer within 0.3 s"):
        get_engine("http", settings).synthesize(TEXT, "en")
    assert time.monotonic() - started < 1.0


def test_a_part_is_spoken_by_the_server_its_stream_pinned_whatever_tts_url_says_now(serve):
    # Given a stream pinned to one TTS server, and TTS_URL since changed to another
    pinned, pinned_url = serve()
    now, now_url = serve()
    settings = config.load({"TTS_ENGINE": "http", "TTS_URL": now_url})
    part = {"stream_id": "pinned-stream", "index": 1, "text": TEXT, "engine": "http", "voice": "en",
            "engine_settings": {"url": pinned_url}}

    # When one of its parts is spoken
    wav, _ = pipeline.speak_part(settings, part)

    # Then the stream's own server spoke it: one voice for the whole answer
    assert read_connect_wav(wav)
    assert (len(pinned.requests), len(now.requests)) == (1, 0)


def test_get_engine_without_a_url_is_invalid_input_naming_the_setting():
    with pytest.raises(InvalidInput, match="set TTS_URL"):
        get_engine("http", config.load({}))


@pytest.mark.parametrize("voice", ["", "  ", None])
def test_a_part_without_a_voice_is_refused_without_a_request(server, voice):
    tts, url = server
    with pytest.raises(PermanentSynthesisError, match="voice is empty: the TTS server needs a voice name"):
        HttpEngine(url).synthesize(TEXT, voice)
    assert tts.requests == []


@pytest.mark.parametrize("url", ["ftp://example.com/tts", "example.com/tts", "http://", "http://host:99999/x",
                                 "http://tts host/x", "http://tts.example/speak now", "http://tts.example/x\n"])
def test_a_url_that_is_not_http_is_invalid_input(url):
    with pytest.raises(InvalidInput, match="TTS server URL"):
        HttpEngine(url)


def test_a_url_in_another_script_is_sent_percent_encoded(server):
    tts, url = server
    speech = HttpEngine(url + "?voice_set=한국어").synthesize(TEXT, "en")
    assert seconds_of(speech) > 1.0
    assert tts.requests[0].path == "/synthesize?voice_set=%ED%95%9C%EA%B5%AD%EC%96%B4"


def test_the_engines_identity_is_its_url_and_default_voices_are_language_codes():
    engine = HttpEngine("https://tts.example.com/v1/speak")
    assert engine.identity() == {"url": "https://tts.example.com/v1/speak"}
    assert (engine.default_voice("en"), engine.default_voice("ko")) == ("en", "ko")


@pytest.mark.parametrize("text", ["", "  \n"])
def test_empty_text_is_refused_without_a_request(server, text):
    tts, url = server
    with pytest.raises(PermanentSynthesisError, match="text is empty"):
        HttpEngine(url).synthesize(text, "en")
    assert tts.request_count == 0


def test_unknown_engine_lists_every_known_engine():
    with pytest.raises(InvalidInput, match="unknown engine 'nope': known engines are espeak, http, polly"):
        get_engine("nope")


@pytest.mark.parametrize(
    ("name", "voices", "identity_keys"),
    [
        ("espeak", ("en-us", "ko"), {"espeak_ng"}),
        ("polly", ("Joanna", "Seoyeon"), {"engine_type", "sample_rate"}),
        ("http", ("en", "ko"), {"url"}),
    ],
)
def test_every_engine_names_its_default_voices_and_what_else_shapes_its_audio(name, voices, identity_keys):
    # Given each engine built from the same settings
    engine = get_engine(name, config.load({"TTS_URL": "http://127.0.0.1:9/synthesize"}))

    # Then it has an English and a Korean voice, and an identity of non-empty strings for a cache key
    assert (engine.default_voice("en"), engine.default_voice("ko")) == voices
    identity = engine.identity()
    assert set(identity) == identity_keys
    assert all(isinstance(value, str) and value for value in identity.values())
    with pytest.raises(InvalidInput, match=f"no default {name} voice for language 'ja'"):
        engine.default_voice("ja")
