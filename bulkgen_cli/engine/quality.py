"""The quality gate (design.md, "The quality gate"): checks of one returned article against what was asked.

Plain functions of plain values, no I/O: `check` takes the article fields asked
for, the content that came back and the job's other completed articles, and
returns a `Verdict` (passed or flagged, with one short sentence per reason).
`decide` says what the job's policy makes of it. The processor (`attempt.py`)
calls both before it records an item as completed, and writes the verdict in
the same conditional write as the result.

The rules:

- words: the article's prose words (`content.count_words`: Markdown heading
  lines are not counted) must reach `ratio` times the `word_count` asked
  (0.7 by default; a ratio of 0 turns this rule off): "612 of 1500 words".
- title and body: "missing title" when the content has no title and its text
  no level-1 Markdown heading (`# Title`); "empty body" when the text has no prose words.
- keywords (keywords mode): each keyword is present, case-insensitively, in
  any simple word form: words are compared by their Snowball stem in the
  item's `language` (English when it names none that Snowball knows), so
  "solar panels" holds the keyword "solar panel" and "running" holds "run"; a
  keyword of several words must appear as those words in that order.
  Irregular forms (leaves / leaf) are not matched: "keyword 'solar panel' missing".
- near-duplicates: the sets of 3-word shingles of the prose (case-folded
  words) of two articles of the same job are compared by their Jaccard index;
  DUPLICATE_THRESHOLD (0.5) or more is a near-duplicate of the most similar
  one: "near-duplicate of #3 (0.91)".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable

import snowballstemmer

from bulkgen_cli.content import content_text, count_words
from bulkgen_cli.core.model import DEFAULT_WORD_COUNT, TURNED_DOWN_ERROR, Item, Mode, QualityPolicy, VerdictStatus

#: Words per shingle in the near-duplicate comparison.
SHINGLE_WORDS = 3
#: Jaccard index of two articles' shingle sets from which the later one is a near-duplicate.
DUPLICATE_THRESHOLD = 0.5
#: Snowball's stemmer for an item's `language`, by ISO 639-1 code (names such as "german" are taken as they are).
STEMMER_FOR = {
    "ar": "arabic", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german", "el": "greek", "en": "english",
    "es": "spanish", "et": "estonian", "eu": "basque", "fi": "finnish", "fr": "french", "ga": "irish",
    "hi": "hindi", "hu": "hungarian", "hy": "armenian", "id": "indonesian", "it": "italian", "lt": "lithuanian",
    "nb": "norwegian", "ne": "nepali", "nl": "dutch", "nn": "norwegian", "no": "norwegian", "pl": "polish",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sr": "serbian", "sv": "swedish", "ta": "tamil",
    "tr": "turkish", "yi": "yiddish",
}
DEFAULT_STEMMER = "english"
_WORD = re.compile(r"\w+")
#: A level-1 Markdown heading: an article's title in its text.
_HEADING = re.compile(r"^\s*#(?!#)\s*(\S.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    """The gate's verdict on one article."""

    status: VerdictStatus
    #: one short sentence per failed check, in the order of the rules
    reasons: tuple[str, ...] = ()
    #: which generation of the item's article it judged (0 first; see `model.next_generation`)
    generation: int = 0

    @property
    def flagged(self) -> bool:
        return self.status is VerdictStatus.flagged

    def to_dict(self) -> dict[str, Any]:
        """As it is stored on the item and shown by `--json`."""
        return {"status": self.status.value, "reasons": list(self.reasons), "generation": self.generation}


class Action(str, Enum):
    #: record it as completed (passed, or flagged under `warn`)
    keep = "keep"
    #: record the item as failed, the reasons as its error
    fail = "fail"
    #: count a try and generate it again
    retry = "retry"


def decide(policy: str, verdict: Verdict, tries: int, max_attempts: int) -> Action:
    """What the job's policy makes of a verdict on the article of try `tries` (of at most `max_attempts`).

    `retry` on the last try fails the item: a job that asked for retries wants no flagged
    article kept, and `retry-failed` can ask again later.
    """
    if not verdict.flagged or QualityPolicy(policy) is QualityPolicy.warn:
        return Action.keep
    if QualityPolicy(policy) is QualityPolicy.retry and tries < max_attempts:
        return Action.retry
    return Action.fail


def failure(verdict: Verdict, policy: str, tries: int) -> str:
    """The error of an item the gate failed."""
    reasons = ", ".join(verdict.reasons)
    if QualityPolicy(policy) is QualityPolicy.retry:
        return f"{TURNED_DOWN_ERROR}{reasons} (still flagged after {tries} tries)"
    return f"{TURNED_DOWN_ERROR}{reasons}"


# -- the rules ----------------------------------------------------------------------------------


def check(article: dict[str, Any], mode: str, content: Any, ratio: float,
          others: Iterable[tuple[int, str]] = (), generation: int = 0) -> Verdict:
    """The verdict on `content`, an article asked for with `article`'s fields in `mode`.

    `others`: (queue position, text) of the job's other completed articles.
    """
    text = content_text(content)
    words = count_words(text)
    reasons = [] if title_of(content) else ["missing title"]
    if words == 0:
        reasons.append("empty body")
    else:
        asked = int(article.get("word_count") or DEFAULT_WORD_COUNT)
        short = words_reason(words, asked, ratio)
        reasons += [short] if short else []
        if mode == Mode.keywords.value:
            missing = missing_keywords(text, list(article.get("keywords") or []), article.get("language"))
            reasons += [f"keyword '{keyword}' missing" for keyword in missing]
        twin = near_duplicate(shingles(text), ((n, shingles(t)) for n, t in others))
        if twin is not None:
            reasons.append(f"near-duplicate of #{twin[0]} ({twin[1]:.2f})")
    status = VerdictStatus.flagged if reasons else VerdictStatus.passed
    return Verdict(status, tuple(reasons), generation)


def words_reason(words: int, asked: int, ratio: float) -> str | None:
    """"612 of 1500 words" when `words` is below `ratio` of `asked`."""
    return f"{words} of {asked} words" if words < ratio * asked else None


def title_of(content: Any) -> str | None:
    """The article's title: the content's `title`, else the first level-1 Markdown heading (`# …`) of its text."""
    if isinstance(content, dict) and isinstance(content.get("title"), str) and content["title"].strip():
        return str(content["title"]).strip()
    heading = _HEADING.search(content_text(content))
    return heading.group(1).strip() if heading else None


def prose_words(text: str) -> list[str]:
    """The case-folded words of the text's prose (Markdown heading lines left out, as `count_words` does)."""
    return [w for line in text.casefold().splitlines() if not line.lstrip().startswith("#")
            for w in _WORD.findall(line)]


def stemmer_name(language: Any) -> str:
    """Snowball's algorithm for an item's `language` ("en", "de-AT", "German"); English when unknown."""
    name = str(language or "").strip().casefold().replace("_", "-")
    name = STEMMER_FOR.get(name.split("-")[0], name)
    return name if name in snowballstemmer.algorithms() else DEFAULT_STEMMER


def missing_keywords(text: str, keywords: list[str], language: Any = None) -> list[str]:
    """The keywords not in `text`: each word compared by its stem, a keyword's words in order."""
    stemmer = snowballstemmer.stemmer(stemmer_name(language))  # one per call: a stemmer is not thread-safe
    stems: dict[str, str] = {}

    def stem(word: str) -> str:
        if word not in stems:
            stems[word] = stemmer.stemWord(word)
        return stems[word]

    words = _WORD.findall(text.casefold())
    haystack = " " + " ".join(stem(w) for w in words) + " "
    missing = []
    for keyword in keywords:
        wanted = [stem(w) for w in _WORD.findall(keyword.casefold())]
        found = (" " + " ".join(wanted) + " ") in haystack if wanted else keyword.casefold() in text.casefold()
        if not found:
            missing.append(keyword)
    return missing


@functools.lru_cache(maxsize=64)  # a job's articles are compared with each new one: shingle each once
def shingles(text: str) -> frozenset[int]:
    """The hashed SHINGLE_WORDS-word shingles of the text's prose; a shorter text is one shingle."""
    words = prose_words(text)
    if len(words) < SHINGLE_WORDS:
        return frozenset({hash(tuple(words))}) if words else frozenset()
    return frozenset(hash(tuple(words[n:n + SHINGLE_WORDS])) for n in range(len(words) - SHINGLE_WORDS + 1))


def similarity(a: frozenset[int], b: frozenset[int]) -> float:
    """The Jaccard index of two shingle sets: 1.0 for the same prose, 0.0 for nothing in common."""
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def near_duplicate(own: frozenset[int], others: Iterable[tuple[int, frozenset[int]]],
                   threshold: float = DUPLICATE_THRESHOLD) -> tuple[int, float] | None:
    """(position, similarity) of the most similar other article at `threshold` or above, else None."""
    best: tuple[int, float] | None = None
    for position, theirs in others:
        score = similarity(own, theirs)
        if score >= threshold and (best is None or score > best[1]):
            best = (position, score)
    return best


def judge(item: Item, content: Any, ratio: float, completed: Iterable[tuple[str, int, Any]],
          generation: int = 0) -> Verdict:
    """The verdict on `content` for `item`, against the job's `completed` articles: (item id, position, content)."""
    others = [(position, content_text(theirs)) for item_id, position, theirs in completed if item_id != item.id]
    return check(item.article, item.mode, content, ratio, others, generation)
