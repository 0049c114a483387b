from __future__ import annotations

from argparse import BooleanOptionalAction
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.complexity import LABELS, cross_validate, keyword_baseline, labelled_prompts
from routing.selectors import ModelSpec, model_get, models_all
from routing.services import RESELLER_PROVIDERS, model_select


def default_baselines(policy: dict[str, Any]) -> list[str]:
    """The router's premium pick, and 'the strongest model' by price: the most expensive
    premium-tier model automatic routing may use, from its maker (not a reseller)."""
    premium = policy["prefer"]["complex"][0]
    strong = [s for s in models_all().values() if s.tier == 3 and s.enabled and s.auto_route
              and s.provider not in RESELLER_PROVIDERS]
    strongest = min(strong, key=lambda s: (-(s.input_cost_per_token + 3 * s.output_cost_per_token), s.id))
    premium_spec = model_get(premium)
    return [premium] if premium_spec is not None and premium_spec.id == strongest.id else [premium, strongest.id]


@dataclass
class Tally:
    prompts: int = 0
    routed: float = 0.0
    baselines: list[float] = field(default_factory=list)
    below: int = 0


class Command(BaseCommand):
    help = ("Replay the labelled prompt set through the router (dry run) and compare the cost of the routed "
            "models with always using the strongest model; count picks below the label's required tier.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--baseline", action="append", dest="baselines",
                            help="the 'always this model' comparison (repeatable); default: the policy's first "
                                 "preferred model for complex prompts (the router's premium pick) and the "
                                 "catalog's most expensive premium-tier model (the strongest)")
        parser.add_argument("--mix", default="60,30,10",
                            help="a traffic mix (simple,moderate,complex percent) to re-weight the set for")
        parser.add_argument("--cv", action=BooleanOptionalAction, default=True,
                            help="also cross-validate the complexity model (~15 s; default on)")
        parser.add_argument("--output", help="also write the report as Markdown to this file")

    def handle(self, *args: Any, baselines: list[str] | None, mix: str, cv: bool, output: str | None,
               **options: Any) -> None:
        policy = settings.MAGEAGENT_ROUTING["POLICY"]
        specs = self._baselines(baselines or default_baselines(policy))
        named = None if baselines else specs
        rows = labelled_prompts()
        tallies = {tier: Tally(baselines=[0.0] * len(specs)) for tier in (1, 2, 3)}
        picks: Counter[str] = Counter()
        agree = 0
        for row in rows:
            decision = model_select(prompt=row["prompt"], model=None, tools=[])
            routed = model_get(decision.model)
            assert routed is not None
            # Both sides answer at the length the task needs (the label's), so only the model differs.
            out = int(policy["expected_output_tokens"][LABELS[row["tier"] - 1]])
            tally = tallies[row["tier"]]
            tally.prompts += 1
            tally.routed += routed.cost_usd(decision.estimated_prompt_tokens, out)
            for i, spec in enumerate(specs):
                tally.baselines[i] += spec.cost_usd(decision.estimated_prompt_tokens, out)
            tally.below += (decision.tier or 0) < row["tier"]
            agree += (decision.complexity or {}).get("label") == LABELS[row["tier"] - 1]
            picks[decision.model] += 1
        report = self._report(rows, specs, tallies, picks, agree, [float(p) for p in mix.split(",")], cv, named)
        self.stdout.write(report)
        if output:
            Path(output).write_text(report)

    @staticmethod
    def _baselines(names: list[str]) -> list[ModelSpec]:
        specs = [model_get(n) for n in names]
        if any(s is None for s in specs):
            raise CommandError(f"unknown baseline model in {names}")
        return [s for s in specs if s is not None]

    @staticmethod
    def _report(rows: list[dict[str, Any]], specs: list[ModelSpec], tallies: dict[int, Tally],
                picks: Counter[str], agree: int, mix: list[float], cv: bool,
                named: list[ModelSpec] | None = None) -> str:
        n = len(rows)
        routed = sum(t.routed for t in tallies.values())
        below = sum(t.below for t in tallies.values())
        lines = [
            "# Routing savings on the labelled prompt set", "",
            f"`python manage.py routing_savings_report` replayed the {n} labelled prompts of "
            "routing/data/prompts.jsonl through the router as dry runs (default policy, every catalog model "
            "deployable). Costs are estimates from the catalog's prices: prompt tokens from the tokenizer, answer "
            "length from the policy's expected output tokens for the prompt's *labelled* class, so both sides "
            "answer at the same length and only the model differs.", "",
            "| strategy | estimated cost | routing saves |", "| --- | ---: | ---: |",
            f"| routed (this policy) | ${routed:.4f} | |",
        ]
        for i, spec in enumerate(specs):
            base = sum(t.baselines[i] for t in tallies.values())
            lines.append(f"| always `{spec.id}` | ${base:.4f} | {1 - routed / base:.1%} |")
        if named and len(named) > 1:
            lines += ["", f"`{named[0].id}` is the router's own premium pick (the policy's first choice for complex "
                      f"prompts); `{named[1].id}` is the strongest model by price: the catalog's most expensive "
                      "premium-tier model from its maker."]
        lines += ["", f"Picked a model below the label's required tier: {below} of {n} prompts ({below / n:.1%}).",
                  "", f"| label | prompts | routed | always `{specs[0].id}` | saving | below tier |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for tier, t in tallies.items():
            lines.append(f"| {LABELS[tier - 1]} (tier {tier}) | {t.prompts} | ${t.routed:.4f} | "
                         f"${t.baselines[0]:.4f} | {1 - t.routed / t.baselines[0]:.1%} | {t.below} |")
        # The set is a third of each class; real traffic is rarely that hard. Per-prompt averages
        # re-weighted to a mix show what the same routing saves there.
        share = {tier: w / sum(mix) for tier, w in zip((1, 2, 3), mix, strict=True)}
        mixed_routed = sum(share[k] * t.routed / t.prompts for k, t in tallies.items())
        mixed_base = sum(share[k] * t.baselines[0] / t.prompts for k, t in tallies.items())
        keyword = sum(LABELS.index(keyword_baseline(r["prompt"])) + 1 == r["tier"] for r in rows)
        lines += ["", f"Re-weighted to a traffic mix of {'/'.join(f'{w:g}' for w in mix)}% simple/moderate/complex: "
                  f"routing saves {1 - mixed_routed / mixed_base:.1%} against always `{specs[0].id}`.", "",
                  f"Complexity estimator vs. the labels (shipped weights, trained on this set): {agree / n:.1%}; "
                  f"the seed's keyword rule: {keyword / n:.1%}."]
        if cv:
            results = cross_validate(rows)
            accuracy = sum(LABELS.index(p) + 1 == y for y, p in results) / n
            under = sum(LABELS.index(p) + 1 < y for y, p in results) / n
            lines.append(f"5-fold cross-validated accuracy (each prompt judged by a model trained without it): "
                         f"{accuracy:.1%}; under-estimated {under:.1%}.")
        lines += ["", "Models picked: " + ", ".join(f"`{m}` {c}" for m, c in picks.most_common()) + "."]
        return "\n".join(lines) + "\n"
