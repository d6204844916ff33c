"""Split a chatbot answer into chunks that are spoken one synthesized part each.

A phone caller hears every chunk boundary: a split after "Dr." or inside "3.5" is a pause and a prosody
reset in the middle of a phrase. So the rules here lean towards *not* splitting when in doubt: a missed
sentence boundary only makes one part a little longer, a wrong one is audible.

How a text becomes chunks:

1. `normalize_for_speech` removes Markdown and collapses whitespace, so that what is split is what is spoken.
2. Sentence boundaries are found by cheap rules at every `. ! ? … 。` followed by a space. Korean sentence
   ends (`다.` `요.` `까?` ...) and plain English ends are decided by the rules; only the genuinely ambiguous
   English cases (an abbreviation before a capital letter: "9 a.m. Please", "Inc. The") are judged by pysbd,
   run on a small window around the candidate. pysbd has no Korean, is quadratic in the text length
   (~0.7 s for 30,000 characters) and splits URLs, so running it over the whole answer is neither right
   nor fast enough.
3. Sentences are shaped into chunks: a short first chunk, later chunks of whole sentences up to a target
   length, a hard maximum that is never exceeded, and a tiny last piece folded into the chunk before it.

Every chunk is a consecutive substring of the normalized text; the space after a sentence stays at the end
of the chunk before it, so callers `.strip()` a chunk before synthesis.
"""

import bisect
import itertools
import re
import unicodedata
from typing import NamedTuple

import pysbd
from pysbd.lang.english import English

# The first part decides the caller's time to first audio: one short clause (the field notes measure
# 15-40 characters as the sweet spot) is synthesized and played while the rest is still being made.
DEFAULT_FIRST_MAX = 40
# Later parts merge sentences: fewer prosody resets and fewer per-part requests, while one part still
# synthesizes in well under a second (~12 s of English speech at 200 characters). The target is a length of
# speech, so a Hangul syllable counts as HANGUL_SPEECH_WEIGHT characters: a Korean part is ~9-12 s too.
DEFAULT_TARGET = 200
# How much longer a Hangul syllable takes to say than a Latin letter: 2.9 in the bench's answers with eSpeak NG
# (60 ms of English audio per character; 26.0 s for 131 syllables and 55 other characters of Korean).
# Counted as one, 200 characters of Korean were 26 s of speech: the longest part of a Korean answer took
# twice as long to synthesize as an English one, and a caller who interrupted it left more of it unheard.
HANGUL_SPEECH_WEIGHT = 3
# Only a single run-on sentence can exceed the target; past this it is cut at a clause. 400 characters is
# far below Polly's 3,000 billed characters per request, leaves room for SSML escaping, and keeps one part
# under ~30 s of English (~60 s of Korean) so an interrupted turn wastes little audio.
DEFAULT_MAX_LEN = 400
# A last piece shorter than this ("Thank you!") sounds clipped as its own part and costs a request.
TINY_TAIL = 20
# Share of the minority script (Hangul or Latin letters) from which a text counts as mixed.
MIXED_SHARE = 0.2
# Characters of context given to pysbd on each side of an ambiguous period, and the most it gets at once.
_PYSBD_CONTEXT = 80
_PYSBD_WINDOW_MAX = 400

# Deeper nesting is not language; dropping the oldest openers keeps stray brackets from costing O(n²).
_MAX_BRACKET_DEPTH = 16
_OPENERS = "\"'“‘([{「『《〈【«"
_CLOSERS = "\"'”’)]}」』》〉】»"
_BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}", "“": "”", "‘": "’", "「": "」", "『": "』", "《": "》",
                  "〈": "〉", "【": "】", "«": "»"}
_BRACKET_CHARS = re.compile(r"[()\[\]{}\"“”‘’「」『』《》〈〉【】«»]")

# Terminal punctuation, then closing quotes/brackets, then the space that makes it a candidate boundary.
# CJK full stops end a sentence even without a following space.
_CANDIDATE = re.compile(r"([.!?…]+|[。！？]+)([" + re.escape(_CLOSERS) + r"]*)( ?)")

# A Korean sentence end without its period ("재고가 없습니다 다음 주에"), as a speech-to-text answer or a
# template writes it: a boundary as "없습니다. " would be. Only endings that close a sentence (-니다, -세요,
# -어요, -까요, -죠 ...), never a bare 요 (필요, 중요 and 주요 are nouns).
_KOREAN_END_UNPUNCTUATED = re.compile(r"(?<=[가-힣])(?:니다|세요|에요|예요|어요|아요|해요|까요|네요|군요|죠) (?=[가-힣])")

# Abbreviations that pysbd's English list lacks but answers use before numbers ("approx. 20", "ext. 123").
_EXTRA_ABBREVIATIONS = frozenset({
    "approx", "appt", "apt", "avg", "ca", "cf", "dept", "est", "excl", "hrs", "incl", "max", "mins",
    "mon", "pg", "qty", "sat", "secs", "sun", "tel", "thu", "thur", "thurs", "tue", "tues", "vol", "wed",
    "fri", "yr", "yrs",
})
_ABBREVIATIONS = frozenset(English.Abbreviation.ABBREVIATIONS) | _EXTRA_ABBREVIATIONS
# Those of them that never end a sentence, even before a capital ("incl. VAT", "approx. USD 20"); "Sat.", "max."
# and "sun." may ("closed on Sat. Our team ..."), so pysbd decides those.
_NEVER_SENTENCE_ENDS = frozenset({"approx", "dept", "excl", "incl", "qty"})
_TITLES = frozenset(English.Abbreviation.PREPOSITIVE_ABBREVIATIONS)  # dr, mr, mrs, prof, st, vs, fig ...
_DOTTED_ABBREVIATION = re.compile(r"[A-Za-z]{1,3}(?:\.[A-Za-z]{1,3})+")  # a.m, e.g, U.S.A, Ph.D
# What carries a time of day on, capitalized: "10 a.m. Monday through Friday", "9 a.m. Eastern Time", "5 p.m.
# Dec. 24". pysbd splits before most of them. Words that also open sentences only where they cannot: a zone
# before "Time" ("Local delivery takes ..."), a short day or month before ".", "," or a number ("Sun Life ...");
# "May" only before a number; none before a colon ("to 6 p.m. Saturday: 10 a.m.": the next line of a list).
_TIME_CONTINUES = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday "
    "january february march april june july august september october november december "
    "et ct mt pt est edt cst cdt mst mdt pst pdt akst hst kst jst utc gmt bst cet cest ist aest".split())
_TIME_ZONE_WORDS = frozenset("eastern central mountain pacific atlantic alaska hawaii korea korean seoul local".split())
_TIME_SHORT_WORDS = frozenset("mon tue tues wed thu thur thurs fri sat sun jan feb mar apr may jun jul aug sep sept "
                              "oct nov dec".split())
_WORD_AT = re.compile(r"[\"'“‘(]*([A-Za-z]+)(\.?)(:?)(?: (\d|(?:Time|Standard|Daylight|time)\b))?")

# Each is tried only where a run of the characters it spans starts: tried at every word of "1.2.1.2..." or
# "가가가...", they took seconds (quadratic) on an answer of 20,000 characters, which ConnectFunction must
# split within Connect's 8 s.
_URL = re.compile(
    r"(?:https?://|www\.)\S+"
    r"|(?<![\w.-])[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|edu|gov|io|ai|app|dev|co|kr|jp|uk|us|info|biz)\b(?:/\S*)?",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL_TRAILING_PUNCTUATION = ".,;:!?)]}'\"”’"

# Places to cut a sentence that is too long, strongest first: clause boundaries, then phrase boundaries
# (before "of the ...", after a Korean particle), then any space.
_PRIORITY_QUOTED_SENTENCE = 6
_PRIORITY_SEMICOLON = 5
_PRIORITY_COMMA = 4
_PRIORITY_CONNECTIVE = 3
_PRIORITY_PHRASE = 2
_PRIORITY_SPACE = 1
_PRIORITY_GLUED = 0
# Korean connective endings (하며, 했는데, 좋지만, 발송되어): a clause goes on after them
_KOREAN_CONNECTIVES = "며|는데|은데|지만|어서|아서|해서|되어|하여|면서|니까|므로|거나"
_CUT_PATTERNS = (
    (re.compile(r"[;:] "), _PRIORITY_SEMICOLON),
    # Not a comma between two numbers: "March 15, 2024" and "1, 2 or 3" are one thing to a listener; nor a dash
    # before one: "5 - 7 days", "9 a.m. – 6 p.m." and "$10 - $20" are ranges.
    (re.compile(r"(?:(?<!\d)[,、，] |[,、，] (?!\d)|(?: [-–—]|—) (?![$€£₩]?\d))"), _PRIORITY_COMMA),
    # Cut before an English conjunction, after a Korean connective ending (먹고, 하며, 했는데, 좋지만, 발송되어).
    (re.compile(
        r" (?=(?:and|but|or|so|because|which|while|although|though|whereas|unless|until|since|if|when"
        r"|where|then|yet)\b)",
        re.IGNORECASE,
    ), _PRIORITY_CONNECTIVE),
    # "하고 있습니다", "하고 싶어요" and "하고 계십니다" are one verb, not two clauses; 최고, 재고, 광고 ... are nouns.
    (re.compile(rf"[가-힣](?:{_KOREAN_CONNECTIVES}) "), _PRIORITY_CONNECTIVE),
    (re.compile(r"[가-힣](?<![최창재광경원금잔공참])고 (?!있|계|싶)"), _PRIORITY_CONNECTIVE),
    # Cut after a Korean subject/object/adverbial particle (상품은, 내일까지).
    (re.compile(r"[가-힣](?:은|는|이|가|을|를|에|에서|에게|께서|으로|로|와|과|도|까지|부터) "), _PRIORITY_PHRASE),
)
# Cut before a preposition or article that starts a phrase ("looking | for the jacket", not "for | the").
_PHRASE_WORDS = frozenset({"the", "a", "an", "to", "of", "for", "in", "on", "at", "by", "with", "from",
                           "about", "into", "after", "before", "during", "that", "who"})
_LONGEST_CUT_WORD = max(map(len, _PHRASE_WORDS | {"although", "whereas", "because"}))
_WORD_AFTER_SPACE = re.compile(r"(?<= )[A-Za-z]+(?=[ ,;:]|$)")  # a word, not the "a" of "a.m." or "e.g."
# A number at a space, after a spaced dash: "$10 – | $20", "5 - | 7 days" is inside a range.
_RANGE_END = re.compile(r"[$€£₩]?\d")

# Markdown, line by line (block syntax) and inline.
# A fence line (CommonMark: 3+ backticks with an info string holding no backtick, or 3+ tildes); "```reset```
# then ..." is inline code, not a fence.
_FENCE_LINE = re.compile(r"^\s*(?:`{3,}[^`]*|~{3,}.*)$")
_RULE_LINE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_BLOCKQUOTE = re.compile(r"^\s*(?:>\s?)+")
_BULLET = re.compile(r"^\s*[-*+•–·]\s+")
_TASK_BOX = re.compile(r"^\[[ xX]\]\s+")  # "- [x] Back up your phone": the box is not read
# "[1]: https://example.com" defines a reference link: nothing to say. A footnote's text ("[^1]: Fees apply.") is.
_LINK_DEFINITION = re.compile(r"^\s{0,3}\[(?!\^)[^\]]{1,500}\]:\s*(?:<[^>\s]*>|(?:https?://|www\.|mailto:|/|#)\S*)"
                              r"""(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*$""")  # not "[Note]: Bring your ID."
_FOOTNOTE = re.compile(r"\[\^[^\]\s]{1,50}\]:?")
_NUMBERED = re.compile(r"^\s*\d{1,3}[.)]\s+")
# Spans are bounded (a link's text, a bold phrase: 500 characters; a link's target: 2,000) so that an
# opener with no closer costs a bounded scan, not one to the end of the line for every opener ("*a *a *a ...").
# A link's target may hold one level of parentheses: [FAQ](https://example.com/faq_(general)).
_IMAGE = re.compile(r"!\[([^\]]{0,500})\]\((?:[^()]|\([^()]*\)){0,2000}\)")
_LINK = re.compile(r"\[([^\]]{1,500})\]\((?:[^()]|\([^()]*\)){0,2000}\)")
_REFERENCE_LINK = re.compile(r"\[([^\]]{1,500})\]\[\d{0,3}\]")  # [the guide][1], not two tags "[공지][필독]"
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)  # a line break inside a table cell
# The entities an answer written for a web page carries; numeric ones could spell control characters
_HTML_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos|nbsp);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'", "nbsp": " "}
_INLINE_CODE = re.compile(r"`+([^`]+?)`+")
_STRONG = re.compile(r"\*\*(?=\S)(.{1,500}?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.{1,500}?)(?<=\S)__(?!\w)")
_EMPHASIS = re.compile(r"(?<![\d*])\*(?=[^\s*])(.{1,500}?)(?<=[^\s*])\*"
                       r"|(?<!\w)_(?=[^\s_])(.{1,500}?)(?<=[^\s_])_(?!\w)")  # not 5*3*2
_STRIKE = re.compile(r"~~(?=\S).{1,500}?(?<=\S)~~")
_TABLE_DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")  # |---|:--:|
_TABLE_PIPE = re.compile(r"(?<!\\)\|")
_CELL_END = re.compile(r"[\s.,;:]+$")
# A check or cross mark in a cell says yes or no: read as such (in the answer's language), not dropped as an emoji.
_MARK_CELLS = {mark: answer for marks, answer in (("✅✔☑✓⭕○◯", ("yes", "예")), ("❌✖❎✗✘✕", ("no", "아니요")))
               for mark in marks}
_MARK = re.compile("^([" + "".join(_MARK_CELLS) + "])[\ufe0e\ufe0f]?(?: +(.*))?$")
_ENDS_WITH_PUNCTUATION = re.compile(r"[.!?…。！？:;,]$")
_LINE_GOES_ON = re.compile(
    r"(?:\b(?:and|but|or|so|because|which|while|that|who|the|a|an|to|of|for|in|on|at|by|with|from|about|into|is|"
    rf"are|was|were|your|our|my)|[가-힣](?:{_KOREAN_CONNECTIVES}|고|은|는|이|가|"
    r"을|를|에|에서|에게|께서|으로|로|와|과|까지|부터)|[-–—(&+/])$", re.IGNORECASE)
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff"))
# Emoji and pictographs, with what builds them (joiner, variation selectors, keycap, tags): a voice reads their
# names ("smiling face with smiling eyes"), which no answer meant. Dingbat digits (❶-➓) stay.
_PICTOGRAPH = ("[\U0001F000-\U0001FAFF\u2600-\u2775\u2794-\u27BF\u2B00-\u2BFF\u231A\u231B\u23E9-\u23F3"
               "\u23F8-\u23FA\u25AA\u25AB\u25B6\u25C0\u25FB-\u25FE\u200D\uFE0E\uFE0F\u20E3\U000E0020-\U000E007F]")
# A run of them in single-spaced text, with the space before it: one character a step, so linear in any input.
_PICTOGRAPH_RUN = re.compile(f" ?{_PICTOGRAPH}(?: ?{_PICTOGRAPH})*")
_WHITESPACE = re.compile(r"\s+")


def normalize_for_speech(text: str) -> str:
    """Return the text a voice should read: Markdown removed, whitespace collapsed to single spaces.

    Headings, bullets (and task boxes), blockquotes, fences, emphasis, inline code, link targets, reference
    link definitions, footnote marks, HTML line breaks, struck-out text and emoji are removed, and common HTML
    entities (&amp;) read as their characters; numbered-list markers stay because "1." is spoken naturally. A
    line without final punctuation gets a period when more text follows, so the voice pauses between lines
    instead of running "Hours We open at 9" or "Total: 31,200 won Delivery: Friday" together; not when the line
    plainly goes on (a sentence wrapped by hand: the next line starts in lower case, or this one ends in "of",
    "and", a Korean connective or particle), unless one of the two is a heading or a list item. Plain
    single-spaced text comes back unchanged.

    A table (GitHub's pipe syntax) is read a row at a time, each cell after its column's heading: "Basic,
    Price $10, Data 5 GB.", a check or cross mark as yes or no in the answer's language. The heading row itself is
    not read out, except for a table of one column.

    The cleanup repeats until nothing changes, which makes the function idempotent even for nested
    Markdown such as `**[bold link](url)**`.
    """
    current = text
    korean = detect_language(text) != "en"  # the voice's language, as pipeline.choose_voice picks it
    while True:
        cleaned = _normalize_once(current, korean)
        if cleaned == current:
            return cleaned
        current = cleaned


def _normalize_once(text: str, korean: bool) -> str:
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    blocks = _blocks(text.splitlines(), korean)
    kept = [(_strip_inline_markdown(line), is_item) for line, is_item in blocks]
    spoken_lines = [index for index, (line, _) in enumerate(kept) if line.strip()]
    next_spoken = dict(zip(spoken_lines, spoken_lines[1:]))  # each spoken line -> the next one, if any
    spoken = []
    for index, (line, is_item) in enumerate(kept):
        if index in next_spoken and not _ENDS_WITH_PUNCTUATION.search(line.rstrip().rstrip(_CLOSERS)):
            following, follows_item = kept[next_spoken[index]]
            # A line ends a sentence ("Order number: 2024-0315\nTotal: 31,200 won" is two statements) unless it
            # plainly goes on in the next one (text wrapped by hand): ending in "of", "and", a Korean connective
            # or particle (출고되어, 상품은), or followed by a line in lower case. A heading, a list item or the
            # line that leads into a list always ends one.
            goes_on = following.lstrip()[:1].islower() or _LINE_GOES_ON.search(line.rstrip())
            if is_item or follows_item or not goes_on:
                line = line.rstrip() + "."
        spoken.append(line)
    return _without_pictographs(_WHITESPACE.sub(" ", " ".join(spoken)).strip())


def _without_pictographs(text: str) -> str:
    """Single-spaced `text` without emoji: "again ⏰." -> "again.", "Hi 😊 there" -> "Hi there"."""
    def replace(run: re.Match) -> str:
        after = text[run.end():run.end() + 1]
        return " " if run.group().startswith(" ") and after not in ("", " ") and not _is_punctuation(after) else ""
    return _PICTOGRAPH_RUN.sub(replace, text).strip()


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def _blocks(lines: list[str], korean: bool) -> list[tuple[str, bool]]:
    """Every line's text without block syntax, flagged when it is a heading or a list item; a table's rows become
    items of their own."""
    lines = [_BLOCKQUOTE.sub("", line) for line in lines]
    blocks = []
    index = 0
    while index < len(lines):
        rows = _table_at(lines, index)
        if rows is None:
            block = _strip_block_markdown(lines[index])
            if block is not None:
                blocks.append(block)
            index += 1
            continue
        headings = _cells(lines[index], korean)
        blocks.extend((row, True) for row in _spoken_rows(headings, [_cells(line, korean) for line in rows]))
        index += 2 + len(rows)
    return blocks


def _table_at(lines: list[str], index: int) -> list[str] | None:
    """The body rows of the table whose heading row is `lines[index]`, or None when no table starts there. Like
    GitHub Markdown's, but more lenient: the delimiter row (|---|---|) under the heading row makes it a table
    whatever its count of cells (no cell goes unread), and it ends at a line without a pipe or one that starts
    another block (a list item, a heading, a fence)."""
    if index + 1 >= len(lines) or "|" not in lines[index] or "|" not in lines[index + 1]:
        return None
    if not _TABLE_DELIMITER.match(lines[index + 1]):
        return None
    end = index + 2
    while end < len(lines) and "|" in lines[end] and not _starts_block(lines[end]):
        end += 1
    return lines[index + 2:end]


def _starts_block(line: str) -> bool:
    return any(pattern.match(line) for pattern in (_BULLET, _NUMBERED, _HEADING, _FENCE_LINE))


def _cells(line: str, korean: bool) -> list[str]:
    """A table row's cells, each as it is said: without inline Markdown, emoji or closing punctuation, and a
    check or cross mark as a word."""
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [_said_cell(cell.strip().replace("\\|", "|"), korean) for cell in _TABLE_PIPE.split(line)]


def _said_cell(cell: str, korean: bool) -> str:
    cell = _strip_inline_markdown(cell).strip()
    mark = _MARK.match(cell)
    if mark:  # "✅" -> "yes", "✅ (fee)" -> "yes (fee)", "❌ Coming soon" -> "no, Coming soon"
        word, rest = _MARK_CELLS[mark.group(1)][korean], mark.group(2) or ""
        cell = word + ("" if not rest else " " + rest if rest.startswith("(") else ", " + rest)
    return _CELL_END.sub("", _without_pictographs(_WHITESPACE.sub(" ", cell)))


def _spoken_rows(headings: list[str], rows: list[list[str]]) -> list[str]:
    """A table's rows as sentences: the first cell names the row, then each other cell follows its heading."""
    if not rows or len(headings) == 1 and all(len(row) == 1 for row in rows):  # the headings, or a plain list
        lines = [", ".join(filter(None, headings))] + [row[0] for row in rows]
        return [line + "." for line in lines if line]
    spoken = []
    for label, *cells in rows:
        pairs = itertools.zip_longest(headings[1:], cells, fillvalue="")
        said = ", ".join(f"{heading} {cell}".strip() for heading, cell in pairs if cell)
        if label or said:
            spoken.append(", ".join(filter(None, (label, said))) + ".")
    return spoken


def _strip_block_markdown(line: str) -> tuple[str, bool] | None:
    """Remove a line's block syntax (a blockquote's is gone already); None drops the line. The flag marks headings
    and list items."""
    if _FENCE_LINE.match(line) or _RULE_LINE.match(line) or _LINK_DEFINITION.match(line):
        return None
    heading = _HEADING.match(line)
    if heading:
        return heading.group(1), True
    bullet = _BULLET.match(line)
    if bullet:
        return _TASK_BOX.sub("", line[bullet.end():]), True
    return line, bool(_NUMBERED.match(line))


def _strip_inline_markdown(line: str) -> str:
    line = _HTML_BREAK.sub(" ", _HTML_ENTITY.sub(lambda m: _ENTITIES[m.group(1)], line))
    line = _FOOTNOTE.sub("", line)
    line = _IMAGE.sub(r"\1", line)
    line = _LINK.sub(r"\1", line)
    line = _REFERENCE_LINK.sub(r"\1", line)
    line = _INLINE_CODE.sub(r"\1", line)
    line = _STRONG.sub(lambda m: m.group(1) or m.group(2), line)
    line = _EMPHASIS.sub(lambda m: m.group(1) or m.group(2), line)
    return _STRIKE.sub("", line)  # struck-out text ("~~$20~~ $15") is no longer true: not spoken


def detect_language(text: str) -> str:
    """Return "ko", "en" or "mixed" from the share of Hangul and Latin letters.

    Digits, punctuation and other scripts are ignored, and so are URLs and e-mail addresses: they are
    Latin in every language and would make a Korean answer with one link look English. The text is
    "mixed" when the minority script holds at least MIXED_SHARE (20%) of the counted letters, otherwise
    it is the majority script. A text without any such letter (digits only, empty) is "en".
    """
    text = _URL.sub(" ", _EMAIL.sub(" ", text))
    hangul = sum(1 for char in text if _is_hangul(char))
    latin = sum(1 for char in text if char.isalpha() and ord(char) < 0x250)
    counted = hangul + latin
    if counted == 0:
        return "en"
    if min(hangul, latin) / counted >= MIXED_SHARE:
        return "mixed"
    return "ko" if hangul > latin else "en"


def split_for_speech(
    text: str,
    *,
    first_max: int = DEFAULT_FIRST_MAX,
    target: int = DEFAULT_TARGET,
    max_len: int = DEFAULT_MAX_LEN,
) -> list[str]:
    """Split an answer (English, Korean or both) into chunks to synthesize and play in order.

    Guarantees: `"".join(chunks) == normalize_for_speech(text)`; no chunk is empty, whitespace-only or
    longer than `max_len`; the first chunk is at most `first_max` characters; the same input always gives
    the same chunks. Empty or whitespace-only text gives [].

    The first chunk is the first sentence alone when it fits in `first_max`, otherwise its strongest
    clause below `first_max` ("Sure, "): a short first part shortens the silence before the caller hears
    anything. Later chunks merge whole sentences up to `target` characters of speech, where a Hangul syllable
    counts as HANGUL_SPEECH_WEIGHT (it takes about that much longer to say). A sentence longer than
    `max_len` is cut at its best boundary below `max_len`: a sentence end inside a quotation, semicolon or
    colon, comma or dash, conjunction or Korean connective ending (-고, -며, -는데, -지만, -어서), phrase
    start (before "of", after 은/는/을/를), then the last space; a hard cut only when there is no space.
    A last chunk under TINY_TAIL characters is merged into the previous one when that stays within limits.
    Time grows linearly: ~3 ms per 1,000 characters of a usual English answer, ~10 ms when every sentence has
    an ambiguous abbreviation for pysbd to judge (tests/bench/bench_chunking.py on the 2-core build machine).
    See DEFAULT_FIRST_MAX, DEFAULT_TARGET and DEFAULT_MAX_LEN for why the defaults are what they are.
    """
    _check_limits(first_max, target, max_len)
    normalized = normalize_for_speech(text)
    if not normalized:
        return []
    boundaries = _find_sentence_boundaries(normalized, max_len)
    chunks = _shape(normalized, boundaries, first_max, target, max_len)
    return _merge_tiny_tail(chunks, first_max, max_len)


def _check_limits(first_max: int, target: int, max_len: int) -> None:
    for name, value in (("first_max", first_max), ("target", target), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 so that a chunk can carry the space after a word, "
                         f"got {max_len}")
    if max_len < first_max:
        raise ValueError(f"max_len ({max_len}) must be at least first_max ({first_max})")
    if max_len < target:
        raise ValueError(f"max_len ({max_len}) must be at least target ({target})")


def whole_sentences(text: str) -> str:
    """`text` without its last sentence when that one was cut off (no final punctuation): what a chatbot said
    before it ran out of tokens. Sentences end where split_for_speech says ("Call Dr. Kim" is not two); a last
    line with no sentence end in it (a list item, a table row "| Pro | $2") goes whole, unless it is a table row
    that ended ("| Pro | $20 |"); text that is one unfinished sentence is kept, as better than nothing."""
    stripped = text.strip()
    head, newline, last = stripped.rpartition("\n")
    if not stripped or _FINISHED.search(stripped) or newline and last.rstrip().endswith("|"):
        return stripped
    starts = _find_sentence_boundaries(re.sub(r"\s", " ", last), len(last)).starts  # a space for a space: same indexes
    if starts:
        return (head + newline + last[:starts[-1]]).rstrip()
    if not newline:
        return stripped
    # The cut-off sentence began on the line before ("The Basic plan\ncosts $1"): that line is judged again,
    # unless it stands whole (a list item, a heading, a table row, a lead-in ending in a colon)
    before = head.rstrip().rpartition("\n")[2]
    if _FINISHED.search(before) or before.rstrip().endswith(("|", ":")) or _starts_block(before):
        return head.rstrip()
    return whole_sentences(head)


_FINISHED = re.compile(r"[.!?…。！？][" + re.escape(_CLOSERS) + r"]*$")


class _Boundaries(NamedTuple):
    """Sentence starts found in a normalized text, and how good a cut each declined candidate would be.

    `cut_priority` maps a position where the rules chose not to start a sentence to its value as a
    clause cut: a sentence end inside a quotation is a strong place, "Wait... what?" an ordinary pause,
    and the space after "Dr." or "1." the worst space of all.
    """

    starts: list[int]
    cut_priority: dict[int, int]


# Verdicts on one candidate boundary.
_SPLIT = "split"  # a sentence starts here
_ASK = "ask"  # an abbreviation other than a title before a capital letter ("9 a.m. Please"): pysbd decides
_PAUSE = "pause"  # not a sentence start ("Wait... what?") but a natural place to cut a long sentence
_GLUED = "glued"  # after an abbreviation or a list number: cutting here would be audible


def _find_sentence_boundaries(text: str, max_len: int) -> _Boundaries:
    """Decide every candidate boundary by rule, asking pysbd only where English is ambiguous."""
    quote_spans = _quote_spans(text, max_len)
    quote_opens = [start for start, _ in quote_spans]
    starts, asks, cut_priority = [], [], {}
    for match in _CANDIDATE.finditer(text):
        boundary = match.end()
        if boundary >= len(text) or (not match.group(3) and match.group(1)[0] not in "。！？"):
            continue
        if _inside_span(match.start(), boundary, quote_spans, quote_opens):
            cut_priority[boundary] = _PRIORITY_QUOTED_SENTENCE
            continue
        verdict = _classify(text, match)
        if verdict == _SPLIT:
            starts.append(boundary)
        elif verdict == _ASK:
            asks.append((match.start(), boundary))
        elif verdict == _PAUSE:
            cut_priority[boundary] = _PRIORITY_COMMA
        else:
            cut_priority[boundary] = _PRIORITY_GLUED
    starts.extend(match.end() for match in _KOREAN_END_UNPUNCTUATED.finditer(text)
                  if not _inside_span(match.start(), match.end(), quote_spans, quote_opens))
    starts.sort()
    confirmed = _ask_pysbd(text, asks, starts)
    for _, boundary in asks:
        if boundary not in confirmed:
            cut_priority[boundary] = _PRIORITY_GLUED
    return _Boundaries(sorted(set(starts) | confirmed), cut_priority)


def _classify(text: str, match: re.Match) -> str:
    """Decide one candidate: a sentence start, a pause inside a sentence, glued text, or ask pysbd."""
    punctuation = match.group(1)
    token = _token_before(text, match.start())
    following = _next_letter(text, match.end())
    if token and _is_hangul(token[-1]):
        return _SPLIT  # Korean sentence end: 다. 요. 까? 니다. 요…
    if punctuation[0] in "。！？":
        return _SPLIT
    if punctuation != ".":
        return _PAUSE if following.islower() else _SPLIT  # ! ? … ...; "Wait... what?" stays whole
    if _is_list_marker(text, match.start(), token) or (token.isdigit() and following.isdigit()):
        return _GLUED  # "Steps: 1. Open the app. 2. Tap Settings.", a Korean date "2024. 3. 15."
    if token.lower() in _TITLES:
        return _GLUED  # "Dr. Kim", "Prof. Han": pysbd never splits after a title either
    if token.lower() in _NEVER_SENTENCE_ENDS:
        return _GLUED  # pysbd does not know these, so it would always split before a capital
    if token.lower() in ("a.m", "p.m") and _time_continues(text, match.end()):
        return _GLUED
    if _is_abbreviation(token):
        return _ASK if following.isupper() else _GLUED  # "9 a.m. Please"? / "approx. 20", "5 p.m. 주문하신"
    return _PAUSE if following.islower() else _SPLIT


def _time_continues(text: str, index: int) -> bool:
    """Whether the word at `index` carries a time of day on (a day, a month, a time zone: _TIME_CONTINUES); not
    as a label ("6 p.m. Saturday: 10 a.m. to 2 p.m.", a list of opening hours)."""
    word = _WORD_AT.match(text, index)
    if not word or word.group(3):
        return False
    name, dot, after = word.group(1).lower(), word.group(2), word.group(4) or ""
    if name in _TIME_ZONE_WORDS:
        return after[:1].isalpha()
    if name in _TIME_SHORT_WORDS:
        return bool(dot or after[:1].isdigit() or text[word.end():word.end() + 1] in (",", ""))
    return name in _TIME_CONTINUES


def _token_before(text: str, index: int) -> str:
    """The word before a punctuation mark, without surrounding quotes or brackets."""
    start = text.rfind(" ", 0, index) + 1
    return text[start:index].lstrip(_OPENERS).rstrip(_CLOSERS)


def _is_list_marker(text: str, index: int, token: str) -> bool:
    """A number of one or two digits that starts the text or follows a sentence end or a colon.

    "Jan. 5. Please call" and "It is 5. Thanks" are sentence ends; "Steps: 1. Open" is not.
    """
    if not (token.isdigit() and len(token) <= 2):
        return False
    token_start = text.rfind(" ", 0, index) + 1
    if token_start == 0:
        return True
    mark = text[token_start - 2]
    if mark not in ".!?…:;":
        return False
    return not (mark == "." and _is_abbreviation(_token_before(text, token_start - 2)))


def _next_letter(text: str, index: int) -> str:
    """The first character of the next sentence, looking past opening quotes and brackets."""
    while index < len(text) and text[index] in _OPENERS:
        index += 1
    return text[index] if index < len(text) else ""


def _is_abbreviation(token: str) -> bool:
    if len(token) == 1:
        return token.isascii() and token.isalpha()
    return token.lower() in _ABBREVIATIONS or bool(_DOTTED_ABBREVIATION.fullmatch(token))


def _is_hangul(char: str) -> bool:
    return "가" <= char <= "힣" or "ᄀ" <= char <= "ᇿ" or "㄰" <= char <= "㆏"


def _quote_spans(text: str, max_len: int) -> list[tuple[int, int]]:
    """Outermost balanced quote/bracket pairs short enough to keep whole, as (open, close) indexes.

    A pair longer than max_len could not stay in one chunk anyway, and a stray quote mark (an inch sign)
    would otherwise silence every boundary up to the next one.
    """
    stack: list[tuple[str, int]] = []
    spans = []
    for match in _BRACKET_CHARS.finditer(text):
        char, index = match.group(), match.start()
        if char == '"':
            opened = next((depth for depth in range(len(stack) - 1, -1, -1) if stack[depth][0] == '"'), None)
        elif char in _BRACKET_PAIRS:
            stack = stack[-_MAX_BRACKET_DEPTH:] + [(char, index)]
            continue
        else:
            opened = next((depth for depth in range(len(stack) - 1, -1, -1)
                           if _BRACKET_PAIRS.get(stack[depth][0]) == char), None)
            if opened is None:
                continue  # an apostrophe ’ or a stray closer
        if opened is None:
            stack.append((char, index))
            continue
        start = stack[opened][1]
        del stack[opened:]
        if index - start < max_len:
            spans.append((start, index))
    outermost = []
    for start, end in sorted(spans):
        if outermost and start < outermost[-1][1]:
            continue
        outermost.append((start, end))
    return outermost


def _inside_span(punctuation: int, boundary: int, spans: list[tuple[int, int]], opens: list[int]) -> bool:
    position = bisect.bisect_left(opens, punctuation) - 1
    return position >= 0 and boundary <= spans[position][1]


def _ask_pysbd(text: str, asks: list[tuple[int, int]], starts: list[int]) -> set[int]:
    """Return the ambiguous boundaries that pysbd confirms, judging each in a small window of context.

    A candidate's window runs from the sentence start before it to the next certain boundary after it,
    clipped to _PYSBD_CONTEXT characters each side. Neighbouring windows share one pysbd call up to
    _PYSBD_WINDOW_MAX characters: pysbd rescans the whole text for every abbreviation it meets, so its
    cost grows with the square of what it is given. Only candidates found by the rules can be
    confirmed: pysbd never adds a boundary of its own.
    """
    if not asks:
        return set()
    windows: list[tuple[int, int, list[int]]] = []
    for punctuation, boundary in asks:
        before = bisect.bisect_right(starts, punctuation)
        sentence_start = starts[before - 1] if before else 0
        after = bisect.bisect_right(starts, boundary)
        next_start = starts[after] if after < len(starts) else len(text)
        begin = max(sentence_start, _word_start(text, punctuation - _PYSBD_CONTEXT))
        end = min(next_start, _word_end(text, boundary + _PYSBD_CONTEXT))
        if windows and begin <= windows[-1][1] and end - windows[-1][0] <= _PYSBD_WINDOW_MAX:
            shared_begin, _, judged = windows.pop()
            windows.append((shared_begin, end, judged + [boundary]))
        else:
            windows.append((begin, end, [boundary]))
    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
    confirmed = set()
    for begin, end, judged in windows:
        found = {begin + span.start + len(span.sent) - len(span.sent.lstrip())
                 for span in segmenter.segment(_mask_links(text[begin:end]))[1:]}
        confirmed.update(boundary for boundary in judged if boundary in found)
    return confirmed


def _word_start(text: str, index: int) -> int:
    if index <= 0:
        return 0
    return text.rfind(" ", 0, index) + 1


def _word_end(text: str, index: int) -> int:
    if index >= len(text):
        return len(text)
    space = text.find(" ", index)
    return len(text) if space == -1 else space


def _mask_links(text: str) -> str:
    """Replace URLs and e-mail addresses by letters of the same length: pysbd splits "help?id=3.5"."""
    def mask(match: re.Match) -> str:
        link = match.group().rstrip(_URL_TRAILING_PUNCTUATION)
        return "x" * len(link) + match.group()[len(link):]

    return _URL.sub(mask, _EMAIL.sub(mask, text))


def _shape(text: str, boundaries: _Boundaries, first_max: int, target: int, max_len: int) -> list[str]:
    """Pack sentences into chunks: the first sentence alone, then whole sentences up to target (a length of
    speech, see HANGUL_SPEECH_WEIGHT; the limits are characters)."""
    starts = boundaries.starts
    ends = starts + [len(text)]
    spoken = _speech_lengths(text)
    chunks = []
    position = 0
    while position < len(text):
        # The first chunk is one sentence at most: merging would only delay the first audio.
        limit, goal = (first_max, 0) if not chunks else (max_len, target)
        # Only a hard-cut first chunk can leave a space here; the space must not become a chunk alone.
        first_word = position + 1 if text[position] == " " else position
        index = bisect.bisect_right(ends, first_word)
        if ends[index] - position > limit:
            # The first chunk may be a sliver ("Sure, "): it only has to start the audio.
            shortest = 0 if not chunks else limit // 3
            end = _best_cut(text, position, position + limit, shortest, boundaries)
        else:
            end = ends[index]
            while index + 1 < len(ends) and spoken[ends[index + 1]] - spoken[position] <= goal:
                index += 1
                end = ends[index]
        chunks.append(text[position:end])
        position = end
    return chunks


def _speech_weight(char: str) -> int:
    return HANGUL_SPEECH_WEIGHT if "가" <= char <= "힣" else 1


def speech_length(text: str) -> int:
    """How long `text` takes to say, in Latin letters: characters, a Hangul syllable counted HANGUL_SPEECH_WEIGHT
    times."""
    return sum(map(_speech_weight, text))


def _speech_lengths(text: str) -> list[int]:
    """spoken[i] is the speech_length of text[:i]; text[a:b] is spoken[b] - spoken[a] long."""
    return list(itertools.accumulate(map(_speech_weight, text), initial=0))


def _best_cut(text: str, start: int, limit_end: int, shortest: int, boundaries: _Boundaries) -> int:
    """Where to cut text[start:] so that the piece is at most limit_end - start characters long.

    The strongest clause boundary wins; among equals the latest (longest piece). Clause boundaries that
    leave a piece under `shortest` characters are used only when there is none later, so a long sentence
    is not cut into slivers. Without a clause boundary the latest phrase boundary is used, then the
    latest space, the space after an abbreviation ("Dr. | Kim") only if there is no other.
    """
    window = text[start:limit_end + 1]
    priority_at: dict[int, int] = {}
    # A piece may start with a space only after a hard cut with a tiny first_max; it must not end there too.
    first_word = start + 1 if text[start] == " " else start

    def offer(cut: int, priority: int) -> None:
        if first_word < cut <= limit_end and priority > priority_at.get(cut, -1):
            priority_at[cut] = priority

    # Patterns see the whole word at the window's end ("and" cut to "a" is neither a conjunction nor an article),
    # and no further: a text without spaces must not be scanned to its end for every piece.
    horizon = min(len(text), _word_end(text, limit_end) + 1, limit_end + _LONGEST_CUT_WORD + 2)
    for pattern, priority in _CUT_PATTERNS:
        for match in pattern.finditer(text, start, horizon):
            offer(match.end(), priority)
    previous_word = ""
    for match in _WORD_AFTER_SPACE.finditer(text, start, horizon):
        if match.group().lower() in _PHRASE_WORDS and previous_word.lower() not in _PHRASE_WORDS:
            offer(match.start(), _PRIORITY_PHRASE)
        previous_word = match.group()
    for index, char in enumerate(window):
        if char == " ":
            # A number and what it counts, or a range, are one thing: "within 30 | days" and "5 - | 7" only when
            # no other space will do
            in_number = window[index - 1:index].isdigit() or (
                window[index - 2:index] in (" -", " –", " —") and _RANGE_END.match(text, start + index + 1))
            offer(start + index + 1, _PRIORITY_GLUED if in_number else _PRIORITY_SPACE)
    for cut, priority in boundaries.cut_priority.items():
        if first_word < cut <= limit_end:
            priority_at[cut] = priority
    if not priority_at:
        return _hard_cut(text, first_word, limit_end)
    ranked = [(priority, cut) for cut, priority in priority_at.items()]
    clauses = [candidate for candidate in ranked if candidate[0] >= _PRIORITY_CONNECTIVE]
    long_enough = [candidate for candidate in clauses if candidate[1] - start >= shortest]
    return max(long_enough or clauses or ranked)[1]


def _hard_cut(text: str, start: int, limit_end: int) -> int:
    """Cut a piece with no space in it, never before a space or a combining mark when avoidable."""
    cut = limit_end
    while cut - 1 > start and _binds_to_previous(text[cut]):
        cut -= 1
    return cut


def _binds_to_previous(char: str) -> bool:
    """A space, combining mark, zero-width joiner or variation selector must not start a piece."""
    return char == " " or bool(unicodedata.combining(char)) or char in "\u200d\ufe0f"


def _merge_tiny_tail(chunks: list[str], first_max: int, max_len: int) -> list[str]:
    """Fold a last chunk under TINY_TAIL characters into the one before, if that one stays within limits."""
    if len(chunks) < 2 or len(chunks[-1].strip()) >= TINY_TAIL:
        return chunks
    limit = first_max if len(chunks) == 2 else max_len
    if len(chunks[-2]) + len(chunks[-1]) > limit:
        return chunks
    return chunks[:-2] + [chunks[-2] + chunks[-1]]
