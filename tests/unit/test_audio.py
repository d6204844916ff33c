"""Connect plays only WAV, 8 kHz, mono, G.711 u-law: these tests check what Connect and a caller would get."""

import array
import audioop
import io
import math
import shutil
import struct
import subprocess
import wave

import pytest

from tts_stream.audio import (
    SUPPORTED_SAMPLE_RATES,
    ConnectWav,
    read_connect_wav,
    rms_dbfs,
    to_connect_wav,
    ulaw_to_pcm16,
    ulaw_wav,
)
from tts_stream import audio
from tts_stream.engines import EspeakEngine

ULAW_SILENCE = 0xFF


def sine(freq_hz: float, sample_rate: int, seconds: float, amplitude: float = 0.4) -> bytes:
    count = round(sample_rate * seconds)
    step = 2 * math.pi * freq_hz / sample_rate
    return array.array("h", (round(amplitude * 32767 * math.sin(step * i)) for i in range(count))).tobytes()


def tone_level_dbfs(pcm16_8k: bytes, freq_hz: float) -> float:
    """Amplitude of one frequency in 8 kHz PCM (a single-bin Fourier transform), in dBFS."""
    samples = array.array("h", pcm16_8k)
    step = 2 * math.pi * freq_hz / 8000
    re = sum(value * math.cos(step * i) for i, value in enumerate(samples))
    im = sum(value * math.sin(step * i) for i, value in enumerate(samples))
    amplitude = 2 * math.hypot(re, im) / len(samples) / 32768
    return 20 * math.log10(max(amplitude, 1e-9))


def heard(wav: bytes) -> bytes:
    """What a caller hears: the WAV read back strictly and decoded to PCM."""
    return ulaw_to_pcm16(read_connect_wav(wav).ulaw)


def peak_dbfs(pcm16: bytes) -> float:
    return 20 * math.log10(audioop.max(pcm16, 2) / 32768)


@pytest.fixture(scope="module")
def english():
    return EspeakEngine().synthesize("Thank you for calling. Your order shipped this morning.", "en-us")


@pytest.fixture(scope="module")
def korean():
    return EspeakEngine().synthesize("안녕하세요. 주문하신 상품이 오늘 아침에 발송되었습니다.", "ko")


def run_tool(*args: str) -> str:
    tool = args[0]
    assert shutil.which(tool), f"{tool} is not on PATH: install the Debian package sox (soxi) or file"
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


# --- the header Connect reads -------------------------------------------------------------------------------


def test_header_fields_sit_at_the_offsets_a_decoder_reads():
    # Given 1001 samples at 8 kHz: an odd number of u-law bytes
    pcm16 = sine(440, 8000, 1001 / 8000)

    # When it is encoded for Connect
    wav = to_connect_wav(pcm16, 8000)

    # Then the RIFF header says u-law, mono, 8000 Hz, 8000 B/s, block align 1, 8 bits, cbSize 0
    assert wav[0:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert struct.unpack_from("<I", wav, 4)[0] == len(wav) - 8
    assert wav[12:16] == b"fmt " and struct.unpack_from("<I", wav, 16)[0] == 18
    assert struct.unpack_from("<HHIIHHH", wav, 20) == (7, 1, 8000, 8000, 1, 8, 0)
    # And a fact chunk gives the sample count, then the data chunk follows
    assert wav[38:42] == b"fact" and struct.unpack_from("<II", wav, 42) == (4, 1001)
    assert wav[50:54] == b"data" and struct.unpack_from("<I", wav, 54)[0] == 1001
    # And the odd data chunk is padded by one zero byte, counted in the RIFF size only
    assert len(wav) == 58 + 1001 + 1 and wav[-1] == 0


def test_even_length_audio_has_no_pad_byte():
    # Given 1000 samples at 8 kHz
    wav = to_connect_wav(sine(440, 8000, 1000 / 8000), 8000)

    # Then the file ends with the last audio byte
    assert len(wav) == 58 + 1000
    assert struct.unpack_from("<I", wav, 4)[0] == 50 + 1000


def test_soxi_reads_8khz_mono_ulaw_with_the_right_duration(english, tmp_path):
    # Given real speech encoded for Connect and written to disk
    wav = to_connect_wav(english.pcm16, english.sample_rate)
    path = tmp_path / "part.wav"
    path.write_bytes(wav)
    frames = read_connect_wav(wav).frames

    # When sox's own reader inspects it
    # Then it sees 8000 Hz, one channel, u-law, and as many samples as we wrote
    assert run_tool("soxi", "-r", str(path)) == "8000"
    assert run_tool("soxi", "-c", str(path)) == "1"
    assert run_tool("soxi", "-e", str(path)) == "u-law"
    assert run_tool("soxi", "-s", str(path)) == str(frames)
    assert float(run_tool("soxi", "-D", str(path))) == pytest.approx(frames / 8000, abs=0.001)


def test_file_recognises_itu_g711_mulaw(english, tmp_path):
    # Given real speech encoded for Connect
    path = tmp_path / "part.wav"
    path.write_bytes(to_connect_wav(english.pcm16, english.sample_rate))

    # When file(1) identifies it
    description = run_tool("file", str(path))

    # Then it is a mono 8 kHz G.711 mu-law WAV
    assert "WAVE audio" in description
    assert "ITU G.711 mu-law" in description
    assert "mono 8000 Hz" in description


# --- what the caller hears ----------------------------------------------------------------------------------


@pytest.mark.parametrize("speech_fixture", ["english", "korean"])
def test_real_speech_survives_the_round_trip(speech_fixture, request):
    # Given real speech from eSpeak NG
    speech = request.getfixturevalue(speech_fixture)
    spoken_ms = len(speech.pcm16) / 2 / speech.sample_rate * 1000

    # When it is encoded, read back by the strict reader and decoded
    wav = read_connect_wav(to_connect_wav(speech.pcm16, speech.sample_rate))
    pcm16 = ulaw_to_pcm16(wav.ulaw)

    # Then it lasts as long as the engine's audio and is clearly audible
    assert wav.duration_ms == pytest.approx(spoken_ms, abs=1)
    assert rms_dbfs(pcm16) > -30


@pytest.mark.parametrize("sample_rate", SUPPORTED_SAMPLE_RATES)
def test_every_supported_rate_keeps_its_duration(sample_rate):
    # Given half a second of a tone at an engine's rate
    pcm16 = sine(1000, sample_rate, 0.5)

    # When it is encoded
    wav = read_connect_wav(to_connect_wav(pcm16, sample_rate))

    # Then Connect gets half a second at 8 kHz
    assert wav.frames == pytest.approx(4000, abs=1)
    assert wav.duration_ms == pytest.approx(500, abs=0.2)


def test_a_6khz_tone_comes_out_far_quieter_than_a_1khz_tone():
    # Given two tones of equal level from a 22050 Hz engine; 6 kHz cannot exist at 8 kHz and would fold to 2 kHz
    low, high = sine(1000, 22050, 0.5), sine(6000, 22050, 0.5)

    # When both are encoded for Connect
    low_db = rms_dbfs(heard(to_connect_wav(low, 22050)))
    high_db = rms_dbfs(heard(to_connect_wav(high, 22050)))

    # Then the 6 kHz tone is mostly filtered out, even after the part's gain is raised as far as allowed
    assert high_db < low_db - 30


@pytest.mark.parametrize("sample_rate", SUPPORTED_SAMPLE_RATES[1:])
def test_no_audible_alias_from_above_the_telephone_band(sample_rate):
    # Given speech-band content (1013 Hz) mixed with 6151 Hz, which resampling would fold onto 1849 Hz
    # (odd frequencies, so u-law's rounding error spreads as noise instead of piling onto the measured bins)
    mixed = audioop.add(sine(1013, sample_rate, 0.5, 0.3), sine(6151, sample_rate, 0.5, 0.3), 2)

    # When it is encoded for Connect
    pcm16 = heard(to_connect_wav(mixed, sample_rate))

    # Then the folded tone is at least 50 dB below the speech-band tone (without the filter: the same level)
    assert tone_level_dbfs(pcm16, 1849) < tone_level_dbfs(pcm16, 1013) - 50


@pytest.mark.parametrize("sample_rate", SUPPORTED_SAMPLE_RATES[1:])
def test_the_telephone_band_is_kept(sample_rate):
    # Given equal 1 kHz and 3 kHz tones: 3 kHz carries the consonants a caller needs
    mixed = audioop.add(sine(1013, sample_rate, 0.5, 0.3), sine(2999, sample_rate, 0.5, 0.3), 2)

    # When it is encoded for Connect
    pcm16 = heard(to_connect_wav(mixed, sample_rate))

    # Then 3 kHz comes out within 1.5 dB of 1 kHz
    assert tone_level_dbfs(pcm16, 2999) == pytest.approx(tone_level_dbfs(pcm16, 1013), abs=1.5)


def test_quiet_and_loud_parts_play_at_the_same_peak(english):
    # Given the same speech from an engine that speaks quietly and one that speaks loudly
    quiet = audioop.mul(english.pcm16, 2, 0.15)
    loud = audioop.mul(english.pcm16, 2, 1.2)

    # When both are encoded
    quiet_peak = peak_dbfs(heard(to_connect_wav(quiet, english.sample_rate)))
    loud_peak = peak_dbfs(heard(to_connect_wav(loud, english.sample_rate)))

    # Then both peak at -1 dBFS, within u-law's rounding
    assert quiet_peak == pytest.approx(-1, abs=0.5)
    assert loud_peak == pytest.approx(quiet_peak, abs=0.5)


def test_a_noise_floor_is_not_blown_up_to_full_scale():
    # Given a part that is only faint hiss at -60 dBFS
    hiss = sine(1000, 8000, 0.5, amplitude=0.001)

    # When it is encoded
    pcm16 = heard(to_connect_wav(hiss, 8000))

    # Then the gain stops at +20 dB instead of reaching -1 dBFS
    assert peak_dbfs(pcm16) < -38


def test_digital_silence_stays_ulaw_silence():
    # Given a silent part from a 22050 Hz engine
    silence = bytes(2 * 22050)

    # When it is encoded
    wav = read_connect_wav(to_connect_wav(silence, 22050))

    # Then every byte is u-law zero
    assert wav.ulaw == bytes([ULAW_SILENCE]) * 8000


def test_the_pause_after_speech_stays_ulaw_silence(english):
    # Given speech followed by a quarter second of digital silence
    pcm16 = english.pcm16 + bytes(2 * (english.sample_rate // 4))

    # When it is encoded
    wav = read_connect_wav(to_connect_wav(pcm16, english.sample_rate))

    # Then the caller hears true silence there, not a hum or a constant offset
    assert wav.ulaw[-1600:] == bytes([ULAW_SILENCE]) * 1600


@pytest.mark.parametrize(
    ("pcm16", "sample_rate", "message"),
    [
        (b"\x00\x00\x00", 8000, "odd byte count 3"),
        (b"", 8000, "empty audio"),
        (b"\x00\x00", 11025, "unsupported sample rate 11025 Hz: supported rates are 8000, 16000"),
        (b"\x00\x00", 0, "invalid sample rate 0"),
        (b"\x00\x00", -8000, "invalid sample rate -8000"),
        (b"\x00\x00", 22050.0, "invalid sample rate 22050.0"),
        (b"\x00\x00", "8000", "invalid sample rate '8000'"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(pcm16, sample_rate, message):
    # Given audio an engine should never produce
    # When it is encoded
    # Then the error names the problem
    with pytest.raises(ValueError, match=message):
        to_connect_wav(pcm16, sample_rate)


# --- ulaw_wav and the strict reader -------------------------------------------------------------------------


def test_ulaw_wav_wraps_what_a_caller_heard():
    # Given the u-law data of two parts played one after the other
    first = read_connect_wav(to_connect_wav(sine(500, 8000, 0.25), 8000)).ulaw
    second = read_connect_wav(to_connect_wav(sine(700, 8000, 0.125), 8000)).ulaw

    # When the call's audio is written as one WAV
    call = read_connect_wav(ulaw_wav(first + second))

    # Then it holds exactly those bytes and lasts as long as both parts
    assert call == ConnectWav(
        format_tag=7, channels=1, sample_rate=8000, bits_per_sample=8, ulaw=first + second, frames=3000
    )
    assert call.duration_ms == 375


def test_an_empty_recording_is_a_valid_wav():
    # Given a call in which nothing was heard
    # When its audio is written
    call = read_connect_wav(ulaw_wav(b""))

    # Then it is a valid WAV of no length
    assert call.frames == 0 and call.duration_ms == 0


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


ULAW_FMT = struct.pack("<HHIIHHH", 7, 1, 8000, 8000, 1, 8, 0)


def test_reader_accepts_chunks_in_any_order_and_skips_unknown_ones():
    # Given a WAV from another tool: data first, an odd-sized LIST chunk in between, fmt last, no fact chunk
    data = bytes(range(101))
    wav = riff(chunk(b"data", data), chunk(b"LIST", b"INFOx"), chunk(b"fmt ", ULAW_FMT))

    # When it is read
    read = read_connect_wav(wav)

    # Then the padding is honoured and the audio found
    assert read.ulaw == data and read.frames == 101


def pcm_wav(channels: int, rate: int, width: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(bytes(channels * width * 80))
    return buffer.getvalue()


def ulaw_fmt(channels=1, rate=8000, byte_rate=8000, block_align=1, bits=8) -> bytes:
    return struct.pack("<HHIIHHH", 7, channels, rate, byte_rate, block_align, bits, 0)


@pytest.mark.parametrize(
    ("wav", "message"),
    [
        (b"ID3\x04 an mp3", "not a WAV file"),
        (b"OggS" + bytes(60), "not a WAV file"),
        (b"RIFF" + struct.pack("<I", 4) + b"AVI ", "not a WAV file"),
        (riff(chunk(b"fmt ", ULAW_FMT[:14]), chunk(b"data", bytes(8))), "'fmt ' chunk has 14 bytes, fewer than the 16"),
        (pcm_wav(1, 8000, 2), "format tag is 1, not 7"),
        (riff(chunk(b"fmt ", ulaw_fmt(channels=2, byte_rate=16000, block_align=2)), chunk(b"data", bytes(8))),
         "audio has 2 channels, not 1"),
        (riff(chunk(b"fmt ", ulaw_fmt(rate=16000, byte_rate=16000)), chunk(b"data", bytes(8))),
         "sample rate is 16000 Hz, not 8000 Hz"),
        (riff(chunk(b"fmt ", ulaw_fmt(bits=16)), chunk(b"data", bytes(8))), "16 bits per sample, not 8"),
        (riff(chunk(b"fmt ", ulaw_fmt(byte_rate=16000)), chunk(b"data", bytes(8))), "byte rate 16000"),
        (riff(chunk(b"fmt ", ULAW_FMT)), "no 'data' chunk"),
        (riff(chunk(b"data", bytes(8))), "no 'fmt ' chunk"),
        (riff(chunk(b"fmt ", ULAW_FMT), chunk(b"fact", struct.pack("<I", 9)), chunk(b"data", bytes(8))),
         "'fact' chunk does not state"),
        (ulaw_wav(bytes(100))[:-10], "RIFF size says the file has 158 bytes but it has 148"),
        (riff(chunk(b"fmt ", ULAW_FMT), b"data" + struct.pack("<I", 7) + bytes(7)), "odd size but no pad byte"),
        (riff(chunk(b"fmt ", ULAW_FMT), chunk(b"data", bytes(8)), b"LIS"), "truncated chunk header at byte 54"),
        (riff(chunk(b"fmt ", ULAW_FMT), b"data" + struct.pack("<I", 80) + bytes(8)),
         "chunk b'data' at byte 38 claims 80 bytes, past the end"),
        (riff(chunk(b"fmt ", ULAW_FMT), chunk(b"data", bytes(8)), chunk(b"data", bytes(4))), "two b'data' chunks"),
    ],
    ids=["mp3", "ogg", "riff-not-wave", "short-fmt", "pcm16", "stereo", "16khz", "16bit", "byte-rate", "no-data",
         "no-fmt", "fact", "truncated", "no-pad", "cut-chunk-header", "chunk-past-the-end", "two-data-chunks"],
)
def test_reader_refuses_what_connect_would_not_play(wav, message):
    # Given a file that is not exactly 8 kHz mono u-law WAV
    # When the strict reader reads it
    # Then it says what is wrong
    with pytest.raises(ValueError, match=message):
        read_connect_wav(wav)


@pytest.mark.parametrize("pcm16, message", [(b"", "empty audio"), (bytes(3), "odd byte count 3")])
def test_rms_dbfs_refuses_what_is_not_16_bit_pcm(pcm16, message):
    with pytest.raises(ValueError, match=message):
        rms_dbfs(pcm16)


def test_rms_dbfs_measures_loudness():
    # Given digital silence and a full-scale square wave
    silence = bytes(200)
    square = array.array("h", [32767, -32767] * 100).tobytes()

    # Then silence is -inf dBFS and the square wave is 0 dBFS
    assert rms_dbfs(silence) == -math.inf
    assert rms_dbfs(square) == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize("sample_rate", [16000, 22050, 24000])  # 44.1 and 48 kHz are halved first
def test_the_low_pass_filter_meets_its_design(sample_rate):
    # Flat (within 0.1 dB) up to 3400 Hz, and at least 44 dB down from 4600 Hz, where Kaiser's formula aims at 45
    taps = audio._low_pass_taps(sample_rate)
    half = len(taps) // 2
    assert len(taps) % 2 == 1 and taps == taps[::-1]  # symmetric and odd: _fir adds the pairs

    def gain_db(hz):
        response = sum(tap * math.cos(2 * math.pi * hz / sample_rate * (i - half)) for i, tap in enumerate(taps))
        return 20 * math.log10(abs(response) or 1e-300)

    assert max(abs(gain_db(hz)) for hz in range(0, 3401, 50)) < 0.1
    assert max(gain_db(hz) for hz in range(4600, sample_rate // 2 + 1, 25)) < -44
