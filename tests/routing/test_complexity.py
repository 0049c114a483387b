from __future__ import annotations

from collections import Counter

from routing.complexity import LABELS, complexity_estimate, keyword_baseline, labelled_prompts


def test_the_labelled_set_has_over_200_prompts_of_every_class():
    rows = labelled_prompts()

    assert len(rows) >= 200
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert all(n >= 60 for n in Counter(r["tier"] for r in rows).values())


def test_the_estimator_agrees_with_the_labels_far_more_often_than_the_seeds_keywords():
    rows = labelled_prompts()

    ours = sum(complexity_estimate(r["prompt"]).tier == r["tier"] for r in rows) / len(rows)
    keywords = sum(LABELS.index(keyword_baseline(r["prompt"])) + 1 == r["tier"] for r in rows) / len(rows)

    assert ours >= 0.85
    assert ours > keywords + 0.3


def test_a_keyword_does_not_decide_on_its_own():
    # The seed's rule calls the first two complex ("compare", "explain") and the last two
    # simple or moderate ("summarize", no keyword).
    assert complexity_estimate("Compare these two numbers: 17 and 71. Which is larger?").label != "complex"
    assert complexity_estimate("Explain what the abbreviation ASAP means.").label != "complex"
    assert complexity_estimate(
        "Summarize the causes and consequences of the French Revolution and assess which interpretation "
        "historians favour today, with evidence.").label == "complex"
    assert complexity_estimate(
        "Prove that every group of order p^2, where p is prime, is abelian, then derive the number of such "
        "groups up to isomorphism and justify each step rigorously.").label == "complex"


def test_a_long_pasted_document_with_a_one_line_ask_is_not_complex():
    prompt = "Fix the typos in this text and return it:\n\n" + "Teh quick brown fox jumpd over the lazy dog. " * 4000

    assert complexity_estimate(prompt).label != "complex"


def test_a_policy_bias_leans_towards_a_class():
    plain = complexity_estimate("Write a short poem about autumn.")
    leaning = complexity_estimate("Write a short poem about autumn.", bias=[0.0, 0.0, 5.0])

    assert leaning.score > plain.score and leaning.label == "complex"
