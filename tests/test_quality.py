"""The quality gate's rules, as pure functions (bulkgen_cli/engine/quality.py): each rule, the policy, word forms, shingles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkgen_cli.engine import quality
from bulkgen_cli.content import idempotency_key
from bulkgen_cli.content.offline import draft
from bulkgen_cli.core.model import Item, VerdictStatus, next_generation
from bulkgen_cli.engine.quality import Action, Verdict, check, decide, missing_keywords, near_duplicate, shingles, similarity

FLAGGED, PASSED = VerdictStatus.flagged, VerdictStatus.passed


def item(article: dict, mode: str = "topic", position: int = 1, status: str = "processing", **kw) -> Item:
    return Item(id=f"item{position}", bulk_job_id="b", userId="u", mode=mode, article=article, status=status,
                queue_position=position, **kw)


def body(words: int, title: str = "A title") -> dict:
    return {"title": title, "body": f"# {title}\n\n" + " ".join(f"w{n}" for n in range(words)) + "\n"}


# -- words ------------------------------------------------------------------------------------------


def test_words_below_the_ratio_of_the_word_count_asked_are_flagged():
    assert check({"topic": "t", "word_count": 1500}, "topic", body(612), 0.7).reasons == ("612 of 1500 words",)
    assert check({"topic": "t", "word_count": 1000}, "topic", body(699), 0.7).reasons == ("699 of 1000 words",)
    assert check({"topic": "t", "word_count": 1000}, "topic", body(700), 0.7).status is PASSED
    assert check({"topic": "t", "word_count": 1000}, "topic", body(3000), 0.7).status is PASSED  # longer is fine


def test_words_are_counted_as_the_results_count_them_and_the_default_word_count_applies():
    headings = {"title": "T", "body": "# T\n\n## Part 1\n\n" + "word " * 600 + "\n## Part 2\n"}
    assert check({"topic": "t"}, "topic", headings, 0.7).reasons == ("600 of 1000 words",)  # headings not counted


def test_a_ratio_of_zero_turns_the_words_check_off():
    assert check({"topic": "t", "word_count": 1500}, "topic", body(1), 0.0).status is PASSED


# -- title and body ---------------------------------------------------------------------------------


def test_missing_title_and_empty_body():
    assert check({"topic": "t", "word_count": 100}, "topic", {"title": "T", "body": ""}, 0.7).reasons == ("empty body",)
    assert check({"topic": "t", "word_count": 100}, "topic", {"title": " ", "body": "word " * 100}, 0.7).reasons == (
        "missing title",)
    # Headings only: no prose, so empty; and no title in a `## sub-heading`.
    assert check({"topic": "t"}, "topic", "## Part 1\n\n## Part 2\n", 0.7).reasons == ("missing title", "empty body")
    assert check({"topic": "t", "word_count": 100}, "topic", None, 0.7).reasons == ("missing title", "empty body")


def test_a_plain_text_article_takes_its_title_from_its_first_level_one_heading():
    assert quality.title_of("# Cold brew\n\nText") == "Cold brew"
    assert quality.title_of("Intro\n\n## Part 1\n\ntext") is None
    assert quality.title_of({"body": "#  Spaced  \n\ntext"}) == "Spaced"
    assert quality.title_of({"title": "Given", "body": "# Other"}) == "Given"


# -- keywords ---------------------------------------------------------------------------------------


def test_keywords_mode_flags_each_missing_keyword_case_insensitively_in_simple_word_forms():
    text = "# Guide\n\nOur SOLAR PANELS are mounted by Running crews; batteries store the power."
    assert missing_keywords(text, ["solar panel", "run", "battery", "inverter", "panel solar"]) == [
        "inverter", "panel solar"]  # a keyword's words in their order
    article = {"keywords": ["solar panel", "inverter"], "word_count": 100}
    verdict = check(article, "keywords", {"title": "T", "body": text + " word" * 100}, 0.7)
    assert verdict.reasons == ("keyword 'inverter' missing",)


def test_keywords_are_checked_in_the_items_language():
    assert missing_keywords("Die Katzen schlafen.", ["Katze"], "de") == []
    assert missing_keywords("Les panneaux solaires.", ["panneau solaire"], "fr-FR") == []
    assert missing_keywords("Unknown tongue: cats", ["cat"], "klingon") == []  # English rules when unknown
    assert quality.stemmer_name("German") == "german" and quality.stemmer_name(None) == "english"


def test_keywords_are_not_checked_in_other_modes():
    assert check({"topic": "solar", "keywords": ["absent"], "word_count": 100}, "topic", body(100), 0.7).status is PASSED


def test_a_keyword_of_punctuation_only_is_looked_for_as_typed():
    assert missing_keywords("C++ and C#", ["++"]) == [] and missing_keywords("C and D", ["++"]) == ["++"]


syllable = st.tuples(st.sampled_from("bcdfghklmnprtvw"), st.sampled_from("aeiou")).map("".join)
#: Pronounceable words with a vowel before a final consonant: the shape of regular English nouns.
noun = st.builds(lambda parts, end: "".join(parts) + end, st.lists(syllable, min_size=1, max_size=4),
                 st.sampled_from("bdgklmnprt"))


@given(noun, st.booleans())
def test_a_plural_holds_its_singular_keyword_and_the_other_way_round(word, upper):
    plural = word + "s"
    text = f"Some text about {plural.upper() if upper else plural} and more."
    assert missing_keywords(text, [word]) == []
    assert missing_keywords(f"About the {word} here.", [plural.title()]) == []


letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéñABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÜÉÑ", min_size=1, max_size=12)


@given(st.lists(letters, min_size=1, max_size=4), st.lists(letters, max_size=30), st.lists(letters, max_size=30),
       st.sampled_from([None, "en", "de", "fr", "es"]))
def test_a_keyword_typed_into_the_text_is_always_found(keyword_words, before, after, language):
    keyword = " ".join(keyword_words)
    text = " ".join(before + [keyword.upper()] + after)
    assert missing_keywords(text, [keyword], language) == []


# -- near-duplicates ------------------------------------------------------------------------------


def test_a_near_duplicate_names_the_most_similar_article_of_the_job():
    mine = " ".join(f"word{n}" for n in range(200))
    close = mine.replace("word50 ", "other ")  # one word changed
    far = " ".join(f"thing{n}" for n in range(200))
    verdict = check({"topic": "t", "word_count": 200}, "topic", {"title": "T", "body": mine}, 0.7,
                    [(2, far), (3, close), (4, mine[: len(mine) // 3])])
    assert verdict.reasons == ("near-duplicate of #3 (0.97)",)
    assert check({"topic": "t", "word_count": 200}, "topic", {"title": "T", "body": mine}, 0.7, [(2, far)]).status is PASSED


def test_offline_drafts_of_different_topics_are_not_near_duplicates():
    drafts = [draft(item({"topic": f"Topic {n}", "word_count": wc}))["body"] for n in range(10) for wc in (100, 3000)]
    sets = [shingles(d) for d in drafts]
    assert max(similarity(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]) < quality.DUPLICATE_THRESHOLD


unique_words = st.lists(st.from_regex(r"[a-z]{3,8}", fullmatch=True), min_size=60, max_size=300, unique=True)


@given(unique_words, st.data())
def test_an_article_is_never_a_near_duplicate_of_one_with_other_words(words, data):
    theirs = data.draw(st.lists(st.from_regex(r"[a-z]{3,8}", fullmatch=True), min_size=1, max_size=300))
    mine, theirs = " ".join(words), " ".join(w.upper() + "x" for w in theirs)  # no word in common
    assert similarity(shingles(mine), shingles(theirs)) == 0.0
    assert near_duplicate(shingles(mine), [(1, shingles(theirs))]) is None


@given(unique_words, st.data())
def test_an_article_with_a_few_words_changed_stays_a_near_duplicate(words, data):
    changed = list(words)
    for n in data.draw(st.lists(st.integers(0, len(words) - 1), max_size=len(words) // 20)):
        changed[n] = "changed"
    score = similarity(shingles(" ".join(words)), shingles(" ".join(changed)))
    assert score >= quality.DUPLICATE_THRESHOLD
    assert near_duplicate(shingles(" ".join(changed)), [(7, shingles(" ".join(words)))]) == (7, score)


@given(st.lists(st.text(max_size=40), max_size=30), st.lists(st.text(max_size=40), max_size=30))
def test_similarity_is_symmetric_between_zero_and_one_and_one_for_the_same_text(a, b):
    sa, sb = shingles(" ".join(a)), shingles(" ".join(b))
    assert similarity(sa, sb) == similarity(sb, sa) and 0.0 <= similarity(sa, sb) <= 1.0
    assert similarity(sa, sa) == (1.0 if sa else 0.0)


def test_judge_compares_with_the_jobs_other_completed_articles():
    text = body(300)
    me = item({"topic": "t", "word_count": 300}, position=1)
    assert quality.judge(me, text, 0.7, [("item2", 2, text)]).reasons == ("near-duplicate of #2 (1.00)",)
    assert quality.judge(me, text, 0.7, [(me.id, 1, text), ("item3", 3, None)]).status is PASSED


# -- verdicts and the policies ----------------------------------------------------------------------


def test_the_verdict_as_stored():
    verdict = check({"topic": "t", "word_count": 1500}, "topic", body(612), 0.7, generation=2)
    assert verdict.to_dict() == {"status": "flagged", "reasons": ["612 of 1500 words"], "generation": 2}
    assert check({"topic": "t", "word_count": 100}, "topic", body(100), 0.7).to_dict() == {
        "status": "passed", "reasons": [], "generation": 0}


@pytest.mark.parametrize("policy, tries, expected", [
    ("warn", 1, Action.keep), ("warn", 3, Action.keep),
    ("fail", 1, Action.fail),
    ("retry", 1, Action.retry), ("retry", 2, Action.retry), ("retry", 3, Action.fail),
])
def test_what_each_policy_makes_of_a_flagged_article(policy, tries, expected):
    flagged = Verdict(FLAGGED, ("612 of 1500 words",))
    assert decide(policy, flagged, tries, max_attempts=3) is expected
    assert decide(policy, Verdict(PASSED), tries, max_attempts=3) is Action.keep


def test_the_error_of_an_item_the_gate_failed():
    flagged = Verdict(FLAGGED, ("612 of 1500 words", "missing title"))
    assert quality.failure(flagged, "fail", 1) == "quality: 612 of 1500 words, missing title"
    assert quality.failure(flagged, "retry", 3) == "quality: 612 of 1500 words, missing title (still flagged after 3 tries)"


def test_after_a_flagged_article_the_next_request_asks_for_a_new_one():
    """A service that keeps answers by Idempotency-Key must not hand back the article the gate turned down."""
    assert next_generation(None) == 0
    assert next_generation({"status": "flagged", "reasons": ["x"], "generation": 0}) == 1
    assert next_generation({"status": "flagged", "reasons": ["x"], "generation": 1}) == 2
    assert next_generation({"status": "passed", "reasons": [], "generation": 1}) == 1
    assert idempotency_key(item({"topic": "t"})) == "item1"
    assert idempotency_key(item({"topic": "t"}, verdict={"status": "flagged", "generation": 0})) == "item1:regenerate-1"


# -- the store's decisions (store/rules.py) -----------------------------------------------------------


def test_the_flagged_counter_and_summary_are_derived_with_the_counters():
    from bulkgen_cli.core.model import Counts, utcnow
    from bulkgen_cli.store import rules

    flagged = [(4, {"status": "flagged", "reasons": ["612 of 1500 words", "missing title"]})]
    flagged += [(n, {"status": "flagged", "reasons": ["empty body"]}) for n in range(5, 30)]
    fields = rules.counters(Counts(completed=26), [], None, utcnow(), 0.0, flagged)
    assert fields["flagged_items"] == 26 and len(fields["quality_summary"]) == 21
    assert fields["quality_summary"][0] == "#4 612 of 1500 words, missing title"
    assert fields["quality_summary"][-1] == "… and 6 more flagged items"
    assert "flagged_items" not in rules.counters(Counts(), [], None, utcnow(), 0.0)  # only when asked


def test_an_end_writes_its_verdict_or_leaves_the_last_one():
    from bulkgen_cli.core.model import ItemStatus, Outcome, utcnow
    from bulkgen_cli.store import rules

    verdict = {"status": "passed", "reasons": [], "generation": 1}
    assert rules.finished(Outcome(ItemStatus.completed, verdict=verdict), utcnow()).set["verdict"] == verdict
    assert "verdict" not in rules.finished(Outcome(ItemStatus.cancelled), utcnow()).set
    assert "verdict" not in rules.one_more_try(None).set
    assert rules.one_more_try(verdict).set == {"verdict": verdict, "sent_at": None} and rules.one_more_try(verdict).add == {
        "attempts": 1, "retry_count": 1}
