"""The offline engine speaks real English and Korean, refuses what it cannot say, and is safe across threads."""

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tts_stream.audio import rms_dbfs
from tts_stream.engines import EspeakEngine, Speech, get_engine
from tts_stream.errors import InvalidInput, PermanentSynthesisError

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"


def seconds(speech: Speech) -> float:
    return len(speech.pcm16) / 2 / speech.sample_rate


@pytest.mark.parametrize(
    ("voice", "text"),
    [
        ("en-us", "Your order shipped this morning."),
        ("en", "Your order shipped this morning."),
        ("ko", "주문하신 상품이 오늘 아침에 발송되었습니다."),
    ],
)
def test_each_voice_speaks_its_sentence(voice, text):
    # Given a sentence in the voice's language
    # When eSpeak NG speaks it
    speech = EspeakEngine().synthesize(text, voice)

    # Then it is 22050 Hz PCM lasting as long as a spoken sentence, and clearly audible
    assert speech.sample_rate == 22050
    assert len(speech.pcm16) % 2 == 0
    assert 1.0 < seconds(speech) < 6.0
    assert rms_dbfs(speech.pcm16) > -35


def test_markup_in_the_text_is_read_out_not_obeyed():
    # Given text with an SSML pause of ten seconds in it
    text = 'Hello <break time="10s"/> world'

    # When it is spoken
    speech = EspeakEngine().synthesize(text, "en-us")

    # Then no ten-second pause was inserted: the markup is just more text
    assert seconds(speech) < 6.0


@pytest.mark.parametrize("voice", ["xx-nowhere", "", "en\x00", "../en"])
def test_an_unknown_voice_is_a_permanent_failure_naming_it(voice):
    # Given a voice eSpeak NG does not have
    # When a part is synthesized with it
    # Then the part fails for good, and the error says which voice
    with pytest.raises(PermanentSynthesisError, match=re.escape(f"unknown eSpeak NG voice {voice!r}")):
        EspeakEngine().synthesize("Hello.", voice)


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_a_permanent_failure(text):
    # Given a part with nothing to say
    # When it is synthesized
    # Then it fails for good
    with pytest.raises(PermanentSynthesisError, match="text is empty"):
        EspeakEngine().synthesize(text, "en-us")


def test_a_nul_in_the_text_is_a_permanent_failure_not_a_part_cut_short():
    # Given a part with a NUL inside, where the C library would stop reading
    # When it is synthesized
    # Then it fails for good rather than speaking only the words before the NUL
    with pytest.raises(PermanentSynthesisError, match="NUL character"):
        EspeakEngine().synthesize("Your order\x00 shipped this morning.", "en-us")


def test_four_threads_each_get_their_own_audio():
    # Given four parts of very different lengths, as the local cloud synthesizes them on threads
    texts = [
        "Yes.",
        "Your order shipped this morning.",
        "주문하신 상품이 오늘 아침에 발송되었습니다.",
        "Thank you for calling. Your order shipped this morning and should arrive within three business days.",
    ]
    voices = ["en-us", "en-us", "ko", "en"]
    alone = [seconds(EspeakEngine().synthesize(text, voice)) for text, voice in zip(texts, voices)]

    # When all four are synthesized at once, several times over
    with ThreadPoolExecutor(max_workers=4) as pool:
        rounds = [list(pool.map(EspeakEngine().synthesize, texts, voices)) for _ in range(3)]

    # Then every thread got audio as long as its own text gives alone: nothing lost, mixed or swapped
    for speeches in rounds:
        assert [seconds(speech) for speech in speeches] == pytest.approx(alone, abs=0.1)
        assert all(rms_dbfs(speech.pcm16) > -35 for speech in speeches)


def test_get_engine_returns_espeak_by_name():
    # When the default engine is asked for by name
    engine = get_engine("espeak")

    # Then it speaks
    assert engine.name == "espeak"
    assert engine.synthesize("Hello.", "en-us").pcm16


def test_an_unknown_engine_is_invalid_input_listing_the_known_ones():
    # When a request names an engine we do not have
    # Then it is the request's mistake, and the error lists what exists
    with pytest.raises(InvalidInput, match="unknown engine 'nope': known engines are espeak"):
        get_engine("nope")


def test_importing_the_engines_does_not_load_espeak():
    # Given a fresh interpreter, like a Lambda cold start
    # When the engines module is imported
    probe = "import sys, tts_stream.engines; print('espeakng_loader' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env={"PYTHONPATH": str(FUNCTIONS)}, capture_output=True, text=True, check=True
    )

    # Then the library is not loaded until the first synthesis
    assert loaded.stdout.strip() == "False"


def test_korean_and_english_parts_are_about_as_long_to_hear():
    # Given support answers of 12 sentences in English and in Korean
    from tts_stream.chunking import split_for_speech

    english = " ".join(["Your parcel left our depot this morning.", "The driver will call you first.",
                        "You can change the address in the app."] * 4)
    korean = " ".join(["소포가 오늘 아침 출발했습니다.", "기사님이 먼저 전화합니다.", "주소는 앱에서 바꿀 수 있어요."] * 4)

    # When each is split with the defaults and its longest later part is spoken
    def longest_part_seconds(text, voice):
        parts = split_for_speech(text)[1:]
        return max(seconds(EspeakEngine().synthesize(part.strip(), voice)) for part in parts)

    en_s, ko_s = longest_part_seconds(english, "en-us"), longest_part_seconds(korean, "ko")

    # Then the Korean part takes about as long to hear as the English one (counting Hangul syllables as one
    # character each, it took more than twice as long), and neither runs past ~15 s
    assert 0.6 < ko_s / en_s < 1.4, (ko_s, en_s)
    assert max(ko_s, en_s) < 15
