"""Time split_for_speech on English and Korean answers of 300, 3,000 and 30,000 characters.

A third, "Ambiguous" English text is the worst case: every sentence needs pysbd's judgement.

Run: cd /work/main && PYTHONPATH=functions .venv/bin/python tests/bench/bench_chunking.py

The target is under 20 ms for a 3,000-character answer: chunking runs before the first part can be
synthesized, so it adds directly to the caller's time to first audio.
"""

import statistics
import time

from tts_stream.chunking import split_for_speech

RUNS = 7
SIZES = (300, 3_000, 30_000)
TARGET_MS_AT_3000 = 20.0

# Paragraphs written like a support bot's answer, with the cases that need care: titles, times,
# decimals, prices, phone numbers, URLs, e-mail addresses, ellipses and quotes.
ENGLISH = (
    "Thanks for calling. Dr. Kim can see you tomorrow at 9 a.m. Please arrive ten minutes early, "
    "and bring your insurance card. The visit costs approx. 20 dollars, e.g. for a standard check, "
    "and the copay is $3.50. If you need to reschedule, call 010-1234-5678 or visit "
    "https://example.com/help?id=3.5 before 5 p.m. on the day before. You can also write to "
    "help@example.com… We answer within one business day. Version 2.1 of our app lets you "
    'check in early; tap "Check in" on the home screen. Is there anything else I can help you with today? '
)
# The worst case for time: every sentence has an abbreviation before a capital letter, which pysbd judges.
AMBIGUOUS = "Call at 9 a.m. Please bring form No. 5. Apple Inc. The office of the U.S. Army is on floor 3. "
KOREAN = (
    "전화 주셔서 감사합니다. 주문하신 상품은 어제 오후 3시 30분에 발송되었고, 내일 오전 중에 도착할 예정입니다. "
    "배송비는 2,500원이며 총 결제 금액은 31,200원입니다. 배송 조회는 앱에서 가능합니다… "
    "혹시 주소를 변경하고 싶으신가요? 변경은 오늘 5 p.m. 이전까지만 가능합니다. "
    "자세한 내용은 https://example.com/help?id=3.5 에서 확인하시거나 help@example.com 으로 문의해 주세요. "
    "고객센터 번호는 1588-1234입니다. \"교환 신청\" 버튼을 누르면 바로 접수됩니다. 다른 도움이 필요하신가요? "
)


def sample(paragraph: str, size: int) -> str:
    """A text of exactly `size` characters, cut at a space so it does not end mid-word."""
    text = (paragraph * (size // len(paragraph) + 2))[:size]
    return text[: text.rfind(" ")] if len(text) == size else text


def median_ms(text: str) -> float:
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        split_for_speech(text)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    split_for_speech(ENGLISH + KOREAN)  # import-time work and regex compilation are not what we measure
    print(f"{'text':<9} {'chars':>7} {'chunks':>7} {'median ms':>10}")
    missed = []
    for name, paragraph in (("English", ENGLISH), ("Korean", KOREAN), ("Ambiguous", AMBIGUOUS)):
        for size in SIZES:
            text = sample(paragraph, size)
            elapsed = median_ms(text)
            print(f"{name:<9} {len(text):>7,} {len(split_for_speech(text)):>7} {elapsed:>10.2f}")
            if size == 3_000 and elapsed >= TARGET_MS_AT_3000:
                missed.append(name)
    verdict = f"MISSED for {', '.join(missed)}" if missed else "met"
    print(f"target: under {TARGET_MS_AT_3000:.0f} ms for 3,000 characters: {verdict}")


if __name__ == "__main__":
    main()
