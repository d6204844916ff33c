"""Chunking: what a caller hears as separate parts, and the guarantees the pipeline relies on.

The corpus (chunking_corpus.json) lists answers with the chunks a listener should hear. Its modes:
- "sentences": every sentence is its own chunk (first_max=max_len=400, target=1), to test where
  sentences end; a last sentence under 20 characters is still merged into the one before.
- "default": the production defaults, to test the first chunk, merging and the tiny last piece.
- "custom": the case's own `params`, to test long sentences with small limits.
A case without "text" uses the concatenated chunks as its input.
"""

import json
import os
import random
import string
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pysbd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tts_stream.chunking import (
    DEFAULT_FIRST_MAX,
    DEFAULT_MAX_LEN,
    DEFAULT_TARGET,
    detect_language,
    normalize_for_speech,
    split_for_speech,
)

CORPUS = json.loads((Path(__file__).parent / "chunking_corpus.json").read_text(encoding="utf-8"))
MODES = {
    "sentences": {"first_max": 400, "target": 1, "max_len": 400},
    "default": {},
}


def corpus_params(case: dict) -> dict:
    return case["params"] if case["mode"] == "custom" else MODES[case["mode"]]


def corpus_text(case: dict) -> str:
    return case.get("text", "".join(case["chunks"]))


# --- corpus ------------------------------------------------------------------------------------------


def test_corpus_ids_are_unique_and_cover_every_category():
    ids = [case["id"] for case in CORPUS]
    categories = {case["category"] for case in CORPUS}

    assert len(ids) == len(set(ids))
    assert len(CORPUS) >= 150
    assert {"abbreviation", "time", "number", "link", "ellipsis", "korean", "mixed", "quote", "markdown",
            "first-chunk", "max-len", "tiny-tail", "shaping", "edge"} <= categories


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_corpus_case_is_split_where_a_listener_expects(case):
    # Given an answer and the parameters of its mode
    params = corpus_params(case)

    # When it is split for speech
    chunks = split_for_speech(corpus_text(case), **params)

    # Then the caller hears exactly the expected parts, in order
    assert chunks == case["chunks"]


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_corpus_case_keeps_the_guarantees(case):
    params = {**DEFAULTS, **corpus_params(case)}

    chunks = split_for_speech(corpus_text(case), **params)

    assert_guarantees(corpus_text(case), chunks, **params)


# --- defaults, parameters and small behaviours --------------------------------------------------------


def test_defaults_follow_the_field_notes():
    assert 15 <= DEFAULT_FIRST_MAX <= 40
    assert 150 <= DEFAULT_TARGET <= 250
    assert DEFAULT_TARGET < DEFAULT_MAX_LEN <= 1000  # far below Polly's 3,000 billed characters


def test_first_chunk_of_a_long_english_answer_is_its_first_clause():
    # Given a first sentence longer than first_max
    answer = ("Sure, I looked up your order and it shipped yesterday from our Busan warehouse. "
              "It should arrive tomorrow before noon.")

    # When it is split with the defaults
    chunks = split_for_speech(answer)

    # Then the caller first hears the first clause, and the rest follows as one part
    assert chunks == ["Sure, ", "I looked up your order and it shipped yesterday from our Busan warehouse. "
                                "It should arrive tomorrow before noon."]


def test_plain_single_spaced_text_is_spoken_unchanged():
    text = "Your order 4521 shipped at 3:30 p.m. today. It costs $3.50, approx. 20% less than before!"

    assert normalize_for_speech(text) == text
    assert "".join(split_for_speech(text)) == text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"first_max": 0}, "first_max must be at least 1"),
        ({"target": 0}, "target must be at least 1"),
        ({"max_len": 30}, r"max_len \(30\) must be at least first_max \(40\)"),
        ({"max_len": 100, "target": 150}, r"max_len \(100\) must be at least target \(150\)"),
        ({"first_max": 1, "target": 1, "max_len": 1}, "max_len must be at least 2"),
        ({"first_max": -5, "target": 10, "max_len": 20}, "first_max must be at least 1"),
    ],
    ids=["first-max-zero", "target-zero", "max-below-first", "max-below-target", "max-len-one",
         "first-max-negative"],
)
def test_invalid_limits_are_rejected_with_a_message_naming_the_parameter(params, message):
    with pytest.raises(ValueError, match=message):
        split_for_speech("Hello there.", **params)


@pytest.mark.parametrize("value", [40.0, "40", True, None], ids=["float", "str", "bool", "none"])
def test_a_limit_that_is_not_an_int_is_a_type_error(value):
    with pytest.raises(TypeError, match="first_max must be an int"):
        split_for_speech("Hello there.", first_max=value)


def test_threads_splitting_at_once_get_the_same_chunks_as_one_thread():
    # Given answers that each need pysbd (which keeps state on its segmenter)
    answers = [f"Call at {hour} a.m. Please bring form No. {hour}. Apple Inc. The office is on floor {hour}."
               for hour in range(1, 13)] * 4
    expected = [split_for_speech(answer, first_max=400, target=1) for answer in answers]

    # When many threads split them at the same time, as in-process Lambda handlers do
    with ThreadPoolExecutor(max_workers=8) as pool:
        chunks = list(pool.map(lambda answer: split_for_speech(answer, first_max=400, target=1), answers))

    # Then every thread gets what a single thread gets
    assert chunks == expected


def test_limits_are_keyword_only():
    with pytest.raises(TypeError):
        split_for_speech("Hello there.", 40)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Your order has shipped.", "en"),
        ("주문하신 상품이 발송되었습니다.", "ko"),
        ("아이폰 15 Pro 주문이 정상적으로 완료되었습니다.", "ko"),
        ("Your order 주문 has shipped today and arrives tomorrow.", "en"),
        ("Orders placed after 5 p.m. 주문하신 상품은 다음 날 발송됩니다.", "mixed"),
        ("Your order has shipped. 주문하신 상품이 발송되었습니다.", "mixed"),
        ("자세한 내용은 https://www.example.com/help/orders?id=1 에서 확인하세요.", "ko"),
        ("문의는 customer.support@example.com 으로 보내 주세요.", "ko"),
        ("12345 678-90", "en"),
        ("", "en"),
        ("Ça coûte cinq euros, n'est-ce pas?", "en"),
        ("ㅋㅋㅋ 네", "ko"),
    ],
    ids=["english", "korean", "korean-with-product-name", "english-with-one-korean-word",
         "mixed-abbreviation", "mixed-two-sentences", "korean-with-url", "korean-with-email", "digits-only",
         "empty", "latin-accents", "korean-jamo"],
)
def test_detect_language_by_share_of_hangul_and_latin_letters(text, language):
    assert detect_language(text) == language


def test_detect_language_calls_it_mixed_from_a_fifth_of_the_letters():
    assert detect_language("a" * 80 + "가" * 20) == "mixed"
    assert detect_language("a" * 81 + "가" * 19) == "en"
    assert detect_language("가" * 80 + "a" * 20) == "mixed"
    assert detect_language("가" * 81 + "a" * 19) == "ko"


def test_normalize_is_idempotent_on_nested_markdown():
    text = "# **[Title](http://x.com)**\n- *__deep__* item\n> > `code` here"

    once = normalize_for_speech(text)

    assert once == "Title. deep item. code here"
    assert normalize_for_speech(once) == once


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("| Step |\n|:-:|\n| Open the app |\n| Tap Orders. |", "Step. Open the app. Tap Orders."),
        ("| Plan | Price |\n|---|---|", "Plan, Price."),
        ("| Code | Means |\n|---|---|\n| a \\| b | either |\n| c |", "a | b, Means either. c."),
        ("| Plan | Price |\n|---|---|---|\n| Basic | $10 | today |", "Basic, Price $10, today."),
        ("Plans\n| Plan | Price |\n|---|---|\n| Basic | $10 |\nThat is all.", "Plans. Basic, Price $10. That is all."),
        ("| | Price |\n|---|---|\n| Basic | |\n| | $20 |", "Basic. Price $20."),
        ("| Plan | Roaming | 5G |\n|---|---|---|\n| Basic | ❌ | ✅ |\n| Plus | ✔️ | 😊 |",
         "Basic, Roaming no, 5G yes. Plus, Roaming yes."),
        ("| 요금제 | 로밍 |\n|---|---|\n| 기본 | ❌ |\n| 플러스 | ⭕ |", "기본, 로밍 아니요. 플러스, 로밍 예."),
        ("Our stores:\n\n| Store | Open Sundays |\n|---|---|\n| Gangnam (강남) | ✅ |\n| Hongdae | ❌ |",
         "Our stores: Gangnam (강남), Open Sundays yes. Hongdae, Open Sundays no."),
        ("| Plan | Roaming |\n|---|---|\n| Basic | **✅** (fee) |\n| Plus | ❌ Coming soon |\n| Max | ✔\ufe0e |",
         "Basic, Roaming yes (fee). Plus, Roaming no, Coming soon. Max, Roaming yes."),
        ("> | Plan | Price |\n> |---|---|\n> | Basic | $10 |", "Basic, Price $10."),
        ("| Plan | Price |\n|---|---|\n| Basic | $10 |\n- Note: prices | taxes extra",
         "Basic, Price $10. Note: prices | taxes extra"),
    ],
    ids=["one-column", "headings-only", "escaped-pipe-and-short-row", "delimiter-of-another-width",
         "lead-in-and-text-after", "empty-cells", "check-and-cross-marks", "check-and-cross-marks-ko",
         "marks-in-the-answers-language", "marks-with-words-and-markup", "in-a-blockquote", "ended-by-a-list-item"],
)
def test_a_table_is_read_a_row_at_a_time(text, spoken):
    assert normalize_for_speech(text) == spoken
    assert normalize_for_speech(spoken) == spoken


# --- properties ----------------------------------------------------------------------------------------

ENGLISH_WORDS = ["order", "shipped", "Dr.", "Mr.", "a.m.", "p.m.", "e.g.", "approx.", "etc.", "No.", "U.S.",
                 "Kim", "The", "and", "your", "3.5", "$3.50", "10:30", "2024.", "1.", "v1.2.3",
                 "010-1234-5678", "https://example.com/help?id=3.5", "help@example.com", "www.example.kr"]
HANGUL_WORDS = ["주문하신", "상품은", "발송되었습니다.", "감사합니다!", "도와드릴까요?", "했고", "지만", "1,200원",
                "네.", "요.", "다.", "죠.", "까?", "김", "가나다라마바사아자차카타파하"]
PUNCTUATION = [".", "!", "?", "…", "...", "。", ",", ";", ":", " - ", "—", '"', "'", "“", "”", "(", ")", "「",
               "」", "[", "]", "*", "**", "_", "__", "`", "#", "> ", "- ", "~~", "[link](http://x.y)", "😊", "|", "\n|---|---|\n"]
SPACES = [" ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u200b", "\r\n"]

hangul_syllables = st.text(st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), min_size=1, max_size=6)
pieces = st.one_of(
    st.sampled_from(ENGLISH_WORDS),
    st.sampled_from(HANGUL_WORDS),
    hangul_syllables,
    st.sampled_from(PUNCTUATION),
    st.sampled_from(SPACES),
    st.integers(0, 99999).map(str),
    st.text(string.ascii_letters, min_size=1, max_size=12),
    st.text(max_size=3),
)
answers = st.lists(pieces, max_size=120).map("".join)
spaced_answers = st.lists(pieces, max_size=120).map(" ".join)
any_answer = st.one_of(answers, spaced_answers)


@st.composite
def limits(draw):
    first_max = draw(st.integers(1, 80))
    target = draw(st.integers(1, 300))
    max_len = draw(st.integers(max(first_max, target, 2), 400))
    return {"first_max": first_max, "target": target, "max_len": max_len}


DEFAULTS = {"first_max": DEFAULT_FIRST_MAX, "target": DEFAULT_TARGET, "max_len": DEFAULT_MAX_LEN}
PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_guarantees(text: str, chunks: list[str], *, first_max: int, target: int, max_len: int) -> None:
    assert "".join(chunks) == normalize_for_speech(text)
    assert all(chunk.strip() for chunk in chunks), chunks
    assert all(len(chunk) <= max_len for chunk in chunks), [len(chunk) for chunk in chunks]
    if chunks:
        assert len(chunks[0]) <= first_max


@PROPERTY_SETTINGS
@given(any_answer)
def test_property_default_chunks_rebuild_the_normalized_text_within_limits(text):
    chunks = split_for_speech(text)

    assert_guarantees(text, chunks, **DEFAULTS)


@PROPERTY_SETTINGS
@given(any_answer, limits())
def test_property_any_valid_limits_are_respected(text, params):
    chunks = split_for_speech(text, **params)

    assert_guarantees(text, chunks, **params)


@PROPERTY_SETTINGS
@given(any_answer, limits())
def test_property_splitting_is_deterministic(text, params):
    assert split_for_speech(text, **params) == split_for_speech(text, **params)


@PROPERTY_SETTINGS
@given(any_answer)
def test_property_normalize_is_idempotent(text):
    once = normalize_for_speech(text)

    assert normalize_for_speech(once) == once
    assert once == once.strip()
    assert "  " not in once and "\n" not in once


plain_words = st.text(string.ascii_letters + string.digits + ".,!?$%:'", min_size=1, max_size=10)


@PROPERTY_SETTINGS
@given(st.lists(plain_words, max_size=40))
def test_property_plain_single_spaced_text_is_unchanged(words):
    text = " ".join(words)

    assert normalize_for_speech(text) == text


@PROPERTY_SETTINGS
@given(any_answer)
def test_property_chunks_start_at_a_word_and_keep_the_space_after_them(text):
    chunks = split_for_speech(text)

    assert all(not chunk[0].isspace() for chunk in chunks)


PLAIN_WORDS = ["order", "shipped", "arrive", "tomorrow", "account", "payment", "refund", "store", "open",
               "call", "help", "team", "phone", "email", "address", "today", "week", "please", "thanks", "we",
               "you", "will", "can", "was", "your", "the", "to"]
MIDDLE_EXTRAS = ["Dr. Kim", "Mr. Lee", "at 9 a.m. sharp", "e.g. Seoul", "i.e. Busan", "$3.50", "3.5",
                 "version 2.1", "St. Louis", "U.S. customers", "Mrs. Park", "Jan. 5", "No. 7", "at 10:30"]


@PROPERTY_SETTINGS
@given(st.randoms(use_true_random=False))
def test_property_plain_english_sentences_agree_with_pysbd(rng: random.Random):
    # Given English sentences whose ends are plain words (pysbd's own ground)
    sentences = []
    for _ in range(rng.randint(2, 6)):
        words = [rng.choice(PLAIN_WORDS) for _ in range(rng.randint(2, 8))]
        if rng.random() < 0.5:
            words.insert(rng.randint(0, len(words) - 1), rng.choice(MIDDLE_EXTRAS))
        words.append(rng.choice(PLAIN_WORDS))
        sentence = " ".join(words)
        sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".....!?"))
    text = " ".join(sentences)

    # When split one sentence per chunk
    chunks = split_for_speech(text, first_max=400, target=1, max_len=400)

    # Then the sentence starts are exactly those pysbd finds (a tiny last sentence is merged, so skip it)
    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
    pysbd_starts = [span.start for span in segmenter.segment(text)]
    starts = [len("".join(chunks[:index])) for index in range(len(chunks))]
    assert starts == pysbd_starts[: len(starts)]
    assert len(pysbd_starts) - len(starts) in (0, 1)


def test_a_long_run_of_emoji_is_dropped_in_linear_time():
    # A pattern nesting one quantified class inside another took minutes on 26 emoji (48 s on four family emoji
    # in Korean text): one chatbot answer could hold a function past its timeout. The regex engine holds the GIL,
    # so the split runs in a process of its own, which a regression fails by outliving 30 s (this takes ~0.1 s).
    answers = ["Congrats " + "🎉" * 5000 + " see you", "우리 가족 " + "👨‍👩‍👧‍👦" * 2000 + " 사랑해요",
               "x " + "🎉 " * 5000 + "y."]
    script = ("import json, sys; from tts_stream.chunking import split_for_speech; "
              "print(json.dumps([''.join(split_for_speech(a)) for a in json.load(sys.stdin)]))")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(answers), capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "functions")})

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["Congrats see you", "우리 가족 사랑해요", "x y."]


def test_long_runs_without_spaces_or_with_unclosed_markup_split_in_linear_time():
    # Patterns tried at every word of a run with no space ("1.2.1.2...", "가가가...", ".a.a.a") or at every opener
    # with no closer ("*a *a *a", "[a](") took 2-24 s on 20,000 characters, what one answer may hold: longer than
    # Connect waits for ConnectFunction. At 50,000 characters one quadratic pattern takes minutes and outlives the
    # 60 s given here; the linear ones take ~6 s in all.
    answers = ["1.2." * 12_500, ".a" * 25_000, "가" * 50_000, "a" * 50_000, "这是一个句子." * 7_000,
               "a@" * 25_000, "*a " * 16_666, "_a " * 16_666, "~~a " * 12_500, "**a " * 12_500, "[a](" * 12_500]
    script = ("import json, sys; from tts_stream.chunking import detect_language, normalize_for_speech, split_for_speech;"
              " print(json.dumps([[''.join(split_for_speech(a)) == normalize_for_speech(a), detect_language(a)]"
              " for a in json.load(sys.stdin)]))")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(answers), capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "functions")})

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[True, language] for language in ("en", "en", "ko", "en", "en", "en", "en", "en",
                                                                          "en", "en", "en")]


@pytest.mark.parametrize("limit", range(21, 32))
def test_a_word_longer_than_the_limit_is_never_cut_between_a_letter_and_its_combining_mark(limit):
    # Given a word with no space to cut at, each letter carrying a combining accent with no precomposed form
    # (so normalization leaves it as two code points)
    text = "Call " + "q\u0301" * 40 + " now."

    # When it is split with limits that fall between a letter and its accent
    chunks = split_for_speech(text, first_max=limit, target=limit, max_len=limit)

    # Then every piece starts with a letter: no accent is spoken alone or moved to another letter
    assert "".join(chunks) == text
    assert [chunk for chunk in chunks if chunk[0] in " \u0301"] == []
