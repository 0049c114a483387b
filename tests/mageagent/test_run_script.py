"""scripts/run.sh's choice between real providers and the simulator."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parents[2] / "scripts" / "run.sh"


def provider_vars() -> set[str]:
    # The array as bash reads it, not as a regex would guess it.
    script = RUN_SH.read_text()
    start = script.index("PROVIDER_VARS=(")
    end = script.index(")", start) + 1
    out = subprocess.run(["bash", "-c", script[start:end] + '\nprintf "%s\\n" "${PROVIDER_VARS[@]}"'],
                         capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
    return set(out.stdout.split())


def test_every_provider_key_routing_reads_means_no_simulator():
    from routing.deployments import PROVIDER_KEYS

    assert set(PROVIDER_KEYS.values()) <= provider_vars()


@pytest.mark.parametrize("var", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "COHERE_API_KEY",
                                 "OPENROUTER_API_KEY", "MISTRAL_API_KEY", "DEEPSEEK_API_KEY", "XAI_API_KEY",
                                 "GROQ_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_API_KEY", "DEEPINFRA_API_KEY",
                                 "PERPLEXITYAI_API_KEY", "AZURE_API_KEY", "AWS_ACCESS_KEY_ID",
                                 "MAGEAGENT_LLM_CONFIG", "MAGEAGENT_LLM_API_BASE"])
def test_common_litellm_provider_variables_are_recognised(var):
    assert var in provider_vars()
