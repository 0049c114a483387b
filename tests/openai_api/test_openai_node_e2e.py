"""The official `openai` npm package, run by Node, against /v1 end to end (tests/js/openai_sdk.js)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients import tokens

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SCRIPT = Path(__file__).resolve().parent.parent / "js" / "openai_sdk.js"
NODE_SDK = SCRIPT.parent.parent / "node_modules" / "openai"
needs_node = pytest.mark.skipif(shutil.which("node") is None or not NODE_SDK.is_dir(),
                                reason="needs node and tests/node_modules (scripts/test.sh installs them)")


@needs_node
def test_the_openai_npm_package_drives_v1(stack, alice):
    run = subprocess.run(["node", str(SCRIPT), f"{stack.web_url}/v1", alice.key], capture_output=True, text=True,
                         timeout=120)
    seen = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else {"stderr": run.stderr}

    assert "crashed" not in seen and run.returncode == 0, seen
    assert seen["models"][0] == "auto" and "gpt-4o-mini" in seen["models"]
    assert seen["plain"]["content"] == "Hello from Node." and seen["plain"]["usage"]["completion_tokens"] == 3
    assert seen["streamed"]["text"] == tokens(12) and seen["streamed"]["usage"]["completion_tokens"] == 12
    assert [m["content"] for m in seen["echoed"]["messages"]][:2] == ["My name is Ada.", "Noted."]
    assert (seen["echoed"]["temperature"], seen["echoed"]["seed"], seen["echoed"]["max_tokens"]) == (0.5, 3, 200)
    assert seen["echoed"]["response_format"]["json_schema"]["name"] == "person"
    assert seen["toolCall"]["finish"] == "tool_calls"
    assert seen["toolCall"]["calls"][0]["function"]["name"] == "lookup"
    assert seen["auto"] not in ("auto", None)
    background = seen["background"]
    assert background["createdStatus"] in ("queued", "in_progress")
    assert background["sequence"] == list(range(len(background["sequence"])))
    assert background["text"] == background["outputText"] == tokens(40) and background["last"] == "response.completed"
    assert seen["cancelled"] == "cancelled"
    assert seen["error"] == {"status": 400, "code": "validation_error", "type": "invalid_request_error"}
