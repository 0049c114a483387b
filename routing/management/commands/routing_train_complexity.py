from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from routing.complexity import LABELS, MODEL_PATH, cross_validate, keyword_baseline, labelled_prompts, train


class Command(BaseCommand):
    help = ("Train the prompt-complexity model on routing/data/prompts.jsonl, report its cross-validated "
            "accuracy against the labels (and the seed's keyword rule's), and write the weights.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--folds", type=int, default=5)
        parser.add_argument("--dry-run", action="store_true", help="report only; keep the current weights")

    def handle(self, *args: Any, folds: int, dry_run: bool, **options: Any) -> None:
        rows = labelled_prompts()
        results = cross_validate(rows, folds=folds)
        tiers = [LABELS.index(p) + 1 for _, p in results]
        labels = [y for y, _ in results]
        accuracy = sum(p == y for p, y in zip(tiers, labels, strict=True)) / len(rows)
        under = sum(p < y for p, y in zip(tiers, labels, strict=True)) / len(rows)
        keyword = sum(LABELS.index(keyword_baseline(r["prompt"])) + 1 == r["tier"] for r in rows) / len(rows)
        self.stdout.write(f"{len(rows)} labelled prompts: {dict(sorted(Counter(labels).items()))} (tier: count)")
        self.stdout.write(f"{folds}-fold cross-validated accuracy: {accuracy:.1%} "
                          f"(under-estimated: {under:.1%}); seed keyword rule: {keyword:.1%}")
        confusion = Counter(zip(labels, tiers, strict=True))
        self.stdout.write("confusion (label tier -> predicted tier): " + ", ".join(
            f"{y}->{p}: {n}" for (y, p), n in sorted(confusion.items())))
        model = train(rows)
        if not dry_run:
            MODEL_PATH.write_text(json.dumps(model, indent=1) + "\n")
            self.stdout.write(f"weights written to {MODEL_PATH}")
