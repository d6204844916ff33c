"""Turn engine PCM into the only audio Amazon Connect plays: WAV, 8 kHz, mono, G.711 u-law.

Standard library plus `audioop` (from the `audioop-lts` wheel on Python 3.13). Every heavy step is one
audioop call over the whole clip, so encoding runs at C speed without numpy in the Lambda package.
PCM is signed 16-bit little-endian, mono: audioop works in native byte order, which is little-endian on
every Lambda architecture (x86_64, arm64).
"""

import audioop
import functools
import math
import struct
from dataclasses import dataclass

CONNECT_SAMPLE_RATE = 8000
ULAW_FORMAT_TAG = 7
SUPPORTED_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)

# Peak of every part, so the parts of one stream play at one level. -1 dBFS leaves room for u-law rounding.
TARGET_PEAK = round(32767 * 10 ** (-1 / 20))
# Quiet speech is brought up, but silence or a noise floor is never blown up to full scale.
MAX_GAIN = 10.0
# The filter's pair sums add two samples: keeping input peaks at half scale means they never clip.
FILTER_INPUT_PEAK = 16383

# The telephone band ends at 3400 Hz. Whatever lies above 4600 Hz folds back below 3400 Hz at 8 kHz,
# so it must be gone before resampling; 4000-4600 Hz folds into 3400-4000 Hz, which the phone network drops.
PASS_BAND_EDGE_HZ = 3400
STOP_BAND_EDGE_HZ = 4600
STOP_BAND_ATTENUATION_DB = 45.0


@dataclass(frozen=True)
class ConnectWav:
    """A WAV file that Connect can play, as read back by `read_connect_wav`."""

    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    ulaw: bytes
    frames: int

    @property
    def duration_ms(self) -> float:
        return self.frames * 1000 / self.sample_rate


def to_connect_wav(pcm16: bytes, sample_rate: int) -> bytes:
    """Encode one part for Connect: low-pass, resample to 8 kHz, peak-normalize, u-law, WAV header."""
    _check_pcm16(pcm16, sample_rate)
    pcm16, input_gain = _scale_peak(bytes(pcm16), FILTER_INPUT_PEAK, MAX_GAIN)
    pcm8k = _resample_to_8k(pcm16, sample_rate)
    pcm8k, _ = _scale_peak(pcm8k, TARGET_PEAK, MAX_GAIN / input_gain)
    return ulaw_wav(audioop.lin2ulaw(pcm8k, 2))


def ulaw_wav(ulaw: bytes) -> bytes:
    """Wrap 8 kHz mono u-law bytes in the RIFF header Connect expects (also used for what a caller heard)."""
    ulaw = bytes(ulaw)
    fmt = struct.pack(
        "<HHIIHHH",
        ULAW_FORMAT_TAG,
        1,  # channels
        CONNECT_SAMPLE_RATE,
        CONNECT_SAMPLE_RATE,  # bytes per second: one byte per sample
        1,  # block align
        8,  # bits per sample
        0,  # cbSize: non-PCM formats carry this field, even when empty
    )
    body = (
        b"WAVE"
        + _chunk(b"fmt ", fmt)
        + _chunk(b"fact", struct.pack("<I", len(ulaw)))  # non-PCM WAVs state their sample count here
        + _chunk(b"data", ulaw)
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def read_connect_wav(data: bytes) -> ConnectWav:
    """Parse a WAV as a strict decoder would and refuse anything Connect would not play."""
    data = bytes(data)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file: expected 'RIFF' at byte 0 and 'WAVE' at byte 8")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 != len(data):
        raise ValueError(
            f"RIFF size says the file has {riff_size + 8} bytes but it has {len(data)}: truncated or mis-sized"
        )
    chunks = _riff_chunks(data)
    if b"fmt " not in chunks:
        raise ValueError("no 'fmt ' chunk: the audio format is unknown")
    if b"data" not in chunks:
        raise ValueError("no 'data' chunk: the file holds no audio")
    fmt, ulaw = chunks[b"fmt "], chunks[b"data"]
    if len(fmt) < 16:
        raise ValueError(f"'fmt ' chunk has {len(fmt)} bytes, fewer than the 16 every WAV needs")
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    wanted = "Connect plays only WAV, 8000 Hz, mono, 8-bit G.711 u-law (format tag 7)"
    if tag != ULAW_FORMAT_TAG:
        raise ValueError(f"format tag is {tag}, not 7 (u-law): {wanted}")
    if channels != 1:
        raise ValueError(f"audio has {channels} channels, not 1: {wanted}")
    if rate != CONNECT_SAMPLE_RATE:
        raise ValueError(f"sample rate is {rate} Hz, not 8000 Hz: {wanted}")
    if bits != 8:
        raise ValueError(f"{bits} bits per sample, not 8: {wanted}")
    if block_align != 1 or byte_rate != CONNECT_SAMPLE_RATE:
        raise ValueError(f"block align {block_align} and byte rate {byte_rate} contradict 8 kHz mono u-law")
    if b"fact" in chunks:
        fact = chunks[b"fact"]
        if len(fact) < 4 or struct.unpack_from("<I", fact)[0] != len(ulaw):
            raise ValueError(f"'fact' chunk does not state the data chunk's {len(ulaw)} samples")
    return ConnectWav(
        format_tag=tag,
        channels=channels,
        sample_rate=rate,
        bits_per_sample=bits,
        ulaw=ulaw,
        frames=len(ulaw),
    )


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode u-law to 16-bit PCM, to measure what a caller hears."""
    return audioop.ulaw2lin(ulaw, 2)


def rms_dbfs(pcm16: bytes) -> float:
    """Loudness of 16-bit PCM in dB relative to full scale; -inf for digital silence."""
    if not pcm16:
        raise ValueError("empty audio: cannot measure the loudness of nothing")
    if len(pcm16) % 2:
        raise ValueError(f"odd byte count {len(pcm16)}: 16-bit PCM has 2 bytes per sample")
    rms = audioop.rms(pcm16, 2)
    return 20 * math.log10(rms / 32768) if rms else -math.inf


def _check_pcm16(pcm16: bytes, sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"invalid sample rate {sample_rate!r}: expected a positive whole number of Hz")
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        supported = ", ".join(str(rate) for rate in SUPPORTED_SAMPLE_RATES)
        raise ValueError(f"unsupported sample rate {sample_rate} Hz: supported rates are {supported}")
    if not pcm16:
        raise ValueError("empty audio: a part needs at least one sample")
    if len(pcm16) % 2:
        raise ValueError(f"odd byte count {len(pcm16)}: 16-bit PCM has 2 bytes per sample")


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    """A RIFF chunk: the size excludes the pad byte that keeps the next chunk on an even offset."""
    return chunk_id + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)


def _riff_chunks(data: bytes) -> dict[bytes, bytes]:
    """Chunks after the WAVE id, in any order; unknown ones are kept and ignored by the caller."""
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset < len(data):
        if offset + 8 > len(data):
            raise ValueError(f"truncated chunk header at byte {offset}")
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        end = offset + 8 + size
        if end > len(data):
            raise ValueError(f"chunk {chunk_id!r} at byte {offset} claims {size} bytes, past the end of the file")
        if chunk_id in chunks:
            raise ValueError(f"two {chunk_id!r} chunks: a decoder could play either")
        chunks[chunk_id] = data[offset + 8 : end]
        offset = end + size % 2
    if offset != len(data):
        raise ValueError("the last chunk has an odd size but no pad byte")
    return chunks


def _scale_peak(pcm16: bytes, target_peak: int, max_gain: float) -> tuple[bytes, float]:
    """Scale so the peak lands on target_peak, never by more than max_gain; returns the gain used."""
    peak = audioop.max(pcm16, 2)
    if peak == 0:
        return pcm16, 1.0
    gain = min(target_peak / peak, max_gain)
    return audioop.mul(pcm16, 2, gain), gain


def _resample_to_8k(pcm16: bytes, sample_rate: int) -> bytes:
    """audioop.ratecv only interpolates linearly, so remove what would alias before calling it."""
    if sample_rate == CONNECT_SAMPLE_RATE:
        return pcm16
    if sample_rate >= 44100:
        pcm16, sample_rate = _halve_rate(pcm16), sample_rate // 2
    filtered = _fir(pcm16, _low_pass_taps(sample_rate))
    resampled, _ = audioop.ratecv(filtered, 2, 1, sample_rate, CONNECT_SAMPLE_RATE, None)
    return resampled


def _halve_rate(pcm16: bytes) -> bytes:
    """Halve 44.1/48 kHz cheaply, so the main filter runs on half the samples with half the taps.

    A [1 3 3 1]/8 smoother is at least 37 dB down on what would fold onto 0-3400 Hz, and loses under 0.8 dB
    at 3400 Hz; then every other sample is kept.
    """
    smoothed = audioop.mul(pcm16, 2, 0.125)
    for _ in range(3):
        smoothed = audioop.add(smoothed, smoothed[2:] + b"\x00\x00", 2)
    return memoryview(smoothed).cast("h")[::2].tobytes()


@functools.lru_cache(maxsize=None)
def _low_pass_taps(sample_rate: int) -> tuple[float, ...]:
    """Kaiser-windowed sinc, sized by Kaiser's formula for the pass/stop edges and attenuation above."""
    attenuation = STOP_BAND_ATTENUATION_DB
    transition = 2 * math.pi * (STOP_BAND_EDGE_HZ - PASS_BAND_EDGE_HZ) / sample_rate
    half = math.ceil((attenuation - 8) / (2.285 * transition) / 2)
    beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    cutoff = (PASS_BAND_EDGE_HZ + STOP_BAND_EDGE_HZ) / 2 / sample_rate
    taps = []
    for n in range(-half, half + 1):
        ideal = 2 * cutoff * (math.sin(2 * math.pi * cutoff * n) / (2 * math.pi * cutoff * n) if n else 1.0)
        window = _bessel_i0(beta * math.sqrt(1 - (n / half) ** 2)) / _bessel_i0(beta)
        taps.append(ideal * window)
    total = sum(taps)
    return tuple(tap / total for tap in taps)


def _bessel_i0(x: float) -> float:
    """Modified Bessel function of order 0, by its power series (the Kaiser window needs it)."""
    term = total = 1.0
    k = 0
    while term > 1e-12 * total:
        k += 1
        term *= (x / (2 * k)) ** 2
        total += term
    return total


def _fir(pcm16: bytes, taps: tuple[float, ...]) -> bytes:
    """Apply symmetric, odd-length taps with one add and one mul per pair: each is a C loop over the clip.

    The input is zero-padded so the output has the same length and no delay.
    """
    half = len(taps) // 2
    size = len(pcm16)
    padding = bytes(2 * half)
    padded = memoryview(padding + pcm16 + padding)

    def shifted(lag: int) -> memoryview:
        start = 2 * (half + lag)
        return padded[start : start + size]

    out = audioop.mul(pcm16, 2, taps[half])
    for lag in range(1, half + 1):
        pair = audioop.add(shifted(-lag), shifted(lag), 2)
        out = audioop.add(out, audioop.mul(pair, 2, taps[half + lag]), 2)
    return out

