"""How hard a prompt is: simple, moderate or complex (the model tier it needs).

A small multinomial logistic regression over hand-designed features of the prompt's
structure and wording (length of the instruction vs. pasted material, sub-requests,
constraints, code, maths, reasoning and design verbs, technical vocabulary, scale).
It is trained offline on the labelled set in routing/data/prompts.jsonl by
`python manage.py routing_train_complexity`; the weights live in
routing/data/complexity_model.json, so routing needs no ML library at run time and a
prediction costs a few regex passes.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
MODEL_PATH = DATA_DIR / "complexity_model.json"
PROMPTS_PATH = DATA_DIR / "prompts.jsonl"
LABELS = ("simple", "moderate", "complex")  # index + 1 = the model tier the label needs

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.M)
_INLINE_STEP = re.compile(r"(?:^|\s)\(?\d\)\s")
_CODE_TOKEN = re.compile(r"```|\bdef |\bclass |\bfunc |\bfn |=>|\breturn\b|[{};]\s*$|\bimport |\bSELECT\b|#include"
                         r"|\bconst |\bvar |\blet |\w+\(\w*\)", re.M)
_MATH_SYMBOL = re.compile(r"\d\s*[\^*/=<>]\s*\w|\\frac|\\int|∫|∑|√|\b[a-z]\^\d|\bf\([a-z]\)|\bT\(n")
_NUMBER = re.compile(r"\b\d[\d,.]*\b")
_BIG_SCALE = re.compile(r"\b\d[\d,.]*\s*(?:k|m|tb|gb|million|billion|thousand|ms|rps|qps|users|rows|writes|reads"
                        r"|requests|services|developers|lines)\b|p99|\bper second\b", re.I)

_LEXICONS: dict[str, tuple[str, ...]] = {
    # Verbs of deep work: proofs, designs, evaluations, optimisation.
    "reasoning": ("prove", "proof", "derive", "derivation", "design", "architect", "evaluate", "critically",
                  "critique", "justify", "optimize", "optimise", "optimal", "trade-off", "trade-offs",
                  "tradeoffs", "synthesize", "formulate", "assess", "rigorous", "rigorously", "diagnose",
                  "threat", "strategy", "sensitivity", "infer", "fallacies", "counter-argument", "model it",
                  "decision framework", "isolate", "postmortem", "taxonomy", "benchmark", "reconcil"),
    # Everyday, one-step requests.
    "simple": ("what is", "what's", "who ", "when ", "which ", "how many", "translate", "define", "synonym",
               "opposite", "convert", "capital of", "spell", "uppercase", "rhyming", "name three", "name four",
               "list five", "one sentence", "one-line", "tl;dr", "is it", "is this", "fix the grammar", "typos",
               "extract", "label the", "classify the sentiment", "round ", "hello", "thanks", "joke",
               "rephrase", "shorter", "alphabetically", "stand for"),
    # Ordinary writing, explaining and coding work.
    "moderate": ("write", "draft", "email", "explain", "describe", "summarize", "summarise", "function", "script",
                 "query", "plan", "itinerary", "tips", "pros and cons", "compare", "outline", "example",
                 "blog", "story", "cover letter", "schedule", "recipe", "unit test", "regular expression",
                 "step by step", "show your working", "how do i", "how should", "how can", "what are"),
    # Vocabulary of hard domains.
    "technical": ("concurrency", "concurrent", "thread-safe", "deadlock", "lock-free", "atomic", "consistency",
                  "consensus", "latency", "throughput", "shard", "sharded", "replication", "idempotency",
                  "kubernetes", "operator", "compiler", "parser", "ssa", "gradient", "backpropagation",
                  "transformer", "attention", "bayes", "regression", "statistical", "significance",
                  "confounding", "causality", "eigen", "integral", "theorem", "lemma", "group of order",
                  "recurrence", "complexity", "asymptotic", "encryption", "oauth", "vulnerabilit",
                  "differential diagnosis", "enforceable", "gdpr", "habitability", "lagrange", "linear program",
                  "integer programming", "crdt", "saga", "outbox", "multi-region", "multi-tenant",
                  "zero downtime", "schrödinger", "rayleigh", "memory ordering", "garbage collect", "drift",
                  "ltv", "cac", "payback", "shadow price", "chromatic", "induction", "generating function",
                  "irrational", "abelian", "master theorem", "raft", "paxos", "consistent hashing",
                  "mixed precision", "fine-tuning", "lora", "retrieval-augmented"),
    # Requests for depth, breadth or length.
    "depth": ("in depth", "in-depth", "detailed", "comprehensive", "thorough", "all steps", "explain why",
              "with evidence", "citing", "full worked", "full decision tree", "word article", "chapter",
              "literature", "proposal", "at scale", "production", "edge cases", "failure", "rollback",
              "roll out", "rollout", "monitoring", "milestones", "risks", "mitigation", "recommend"),
    # Constraint words: every one is another requirement to satisfy at once.
    "constraints": ("must", "without", "at least", "at most", "no more than", "ensure", "guarantee",
                    "including", "include", "covering", "cover ", "handle", "handles", "support", "supports",
                    "respecting", "while", "keep ", "accounting for", "given", "assume", "assumptions"),
}


def _count(text: str, words: Sequence[str]) -> int:
    return sum(text.count(w) for w in words)


def _instruction(prompt: str) -> tuple[str, str]:
    """Split a prompt into its instruction and pasted material (text after the first
    blank line or code fence), so that a long pasted document with a one-line ask is
    not mistaken for a hard task."""
    for marker in ("\n\n", "```"):
        at = prompt.find(marker)
        if 0 < at:
            return prompt[:at], prompt[at:]
    return prompt, ""


def features(prompt: str) -> list[float]:
    full = prompt.strip()
    # The head and tail carry the request; a 400 KB paste in between only adds length.
    text = full if len(full) <= 6000 else full[:5000] + "\n\n" + full[-1000:]
    lower = text.lower()
    ask, pasted = _instruction(text)
    ask_lower = ask.lower()
    n_words = len(_WORD.findall(text)) if text is full else len(full) // 6
    ask_words = _WORD.findall(ask)
    n_ask = max(len(ask_words), 1)
    long_words = sum(1 for w in ask_words if len(w) >= 10)
    sub_requests = ask_lower.count(" and ") + ask.count(",") + ask.count(";")
    first = ask_lower.split(" ", 1)[0] if ask_lower else ""
    return [
        # Lengths saturate past the labelled set's range (~1,000 words) instead of extrapolating.
        min(math.log1p(n_words), 7.0) / 6.0,
        min(math.log1p(n_ask), 6.0) / 5.0,
        min(math.log1p(len(pasted) if text is full else len(full)), 9.0) / 8.0,
        min(len(_SENTENCE.findall(ask)), 10) / 5.0,
        min(ask.count("?"), 5) / 3.0,
        min(len(_LIST_LINE.findall(text)) + len(_INLINE_STEP.findall(ask)), 12) / 6.0,
        min(len(_CODE_TOKEN.findall(text)), 30) / 10.0,
        min(len(_MATH_SYMBOL.findall(text)), 10) / 5.0,
        min(len(_NUMBER.findall(ask)), 20) / 10.0,
        min(len(_BIG_SCALE.findall(ask)), 6) / 3.0,
        min(_count(ask_lower, _LEXICONS["reasoning"]), 8) / 3.0,
        min(_count(ask_lower, _LEXICONS["simple"]), 4) / 2.0,
        min(_count(ask_lower, _LEXICONS["moderate"]), 6) / 3.0,
        min(_count(lower, _LEXICONS["technical"]), 10) / 3.0,
        min(_count(ask_lower, _LEXICONS["depth"]), 8) / 3.0,
        min(_count(ask_lower, _LEXICONS["constraints"]), 10) / 4.0,
        min(sub_requests, 20) / 8.0,
        long_words / n_ask * 5.0,
        1.0 if first in ("what", "who", "when", "where", "which", "is", "how") and n_ask <= 12 else 0.0,
        1.0 if first in ("why", "how") and n_ask > 12 else 0.0,
    ]


FEATURE_NAMES = (
    "log_words", "log_instruction_words", "log_pasted_chars", "sentences", "questions", "list_items",
    "code_tokens", "math_symbols", "numbers", "scale_markers", "reasoning_verbs", "simple_phrases",
    "moderate_phrases", "technical_terms", "depth_markers", "constraints", "sub_requests",
    "long_word_ratio", "short_factual_question", "long_why_how_question",
)


@dataclass(frozen=True)
class Complexity:
    label: str  # simple | moderate | complex
    score: float  # 0 (trivial) .. 1 (hardest): the expected tier, rescaled
    probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def tier(self) -> int:
        return LABELS.index(self.label) + 1


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _logits(weights: list[list[float]], bias: list[float], x: list[float]) -> list[float]:
    return [b + sum(w * v for w, v in zip(row, x, strict=True)) for row, b in zip(weights, bias, strict=True)]


@cache
def _model() -> dict[str, Any]:
    return json.loads(MODEL_PATH.read_text())


def complexity_estimate(prompt: str, *, bias: Sequence[float] | None = None) -> Complexity:
    """`bias` is added to the class logits (simple, moderate, complex): a policy may
    lean towards cheaper or stronger models."""
    model = _model()
    logits = _logits(model["weights"], model["bias"], features(prompt))
    if bias:
        logits = [v + b for v, b in zip(logits, bias, strict=False)]
    probs = _softmax(logits)
    best = max(range(len(LABELS)), key=lambda i: probs[i])
    expected = sum((i + 1) * p for i, p in enumerate(probs))
    return Complexity(label=LABELS[best], score=round((expected - 1) / 2, 4),
                      probabilities={name: round(p, 4) for name, p in zip(LABELS, probs, strict=True)})


def keyword_baseline(prompt: str) -> str:
    """The seed design's estimator, kept to measure against."""
    lower = prompt.lower()
    if any(w in lower for w in ("analyze", "reason", "explain", "compare", "evaluate")):
        return "complex"
    if any(w in lower for w in ("summarize", "translate", "extract")):
        return "simple"
    return "moderate"


# --- offline training --------------------------------------------------------------------
def labelled_prompts() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PROMPTS_PATH.read_text().splitlines() if line.strip()]


def train(rows: Sequence[dict[str, Any]], *, l2: float = 0.001, epochs: int = 1500,
          rate: float = 0.5) -> dict[str, Any]:
    """Full-batch gradient descent on the softmax cross-entropy: 250 prompts x 20
    features trains in a couple of seconds in plain Python."""
    xs = [features(r["prompt"]) for r in rows]
    ys = [int(r["tier"]) - 1 for r in rows]
    k, d, n = len(LABELS), len(FEATURE_NAMES), len(xs)
    weights = [[0.0] * d for _ in range(k)]
    bias = [0.0] * k
    for _ in range(epochs):
        grad_w = [[0.0] * d for _ in range(k)]
        grad_b = [0.0] * k
        for x, y in zip(xs, ys, strict=True):
            probs = _softmax(_logits(weights, bias, x))
            for c in range(k):
                err = probs[c] - (1.0 if c == y else 0.0)
                grad_b[c] += err
                row = grad_w[c]
                for j in range(d):
                    row[j] += err * x[j]
        for c in range(k):
            bias[c] -= rate * grad_b[c] / n
            for j in range(d):
                weights[c][j] -= rate * (grad_w[c][j] / n + l2 * weights[c][j])
    return {"labels": list(LABELS), "features": list(FEATURE_NAMES),
            "weights": [[round(w, 5) for w in row] for row in weights], "bias": [round(b, 5) for b in bias]}


def predict_with(model: dict[str, Any], prompt: str) -> str:
    logits = _logits(model["weights"], model["bias"], features(prompt))
    return LABELS[max(range(len(LABELS)), key=lambda i: logits[i])]


def cross_validate(rows: Sequence[dict[str, Any]], *, folds: int = 5, seed: int = 7,
                   **train_args: Any) -> list[tuple[int, str]]:
    """(label tier, predicted label) for every prompt, each predicted by a model that
    never saw it: stratified k-fold."""
    rng = random.Random(seed)
    by_tier: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_tier.setdefault(int(row["tier"]), []).append(i)
    fold_of: dict[int, int] = {}
    for indexes in by_tier.values():
        rng.shuffle(indexes)
        for pos, i in enumerate(indexes):
            fold_of[i] = pos % folds
    out: list[tuple[int, str]] = [(0, "")] * len(rows)
    for f in range(folds):
        model = train([r for i, r in enumerate(rows) if fold_of[i] != f], **train_args)
        for i, row in enumerate(rows):
            if fold_of[i] == f:
                out[i] = (int(row["tier"]), predict_with(model, row["prompt"]))
    return out
