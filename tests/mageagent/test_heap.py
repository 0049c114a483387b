"""Start-up objects are kept out of the cycle collector's full collections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_web_application_freezes_what_start_up_made():
    code = ("import gc, mageagent.asgi; "
            "print(gc.get_freeze_count(), sum(len(gc.get_objects(g)) for g in range(3)))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mageagent.settings", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()

    frozen, tracked = int(out[0]), int(out[1])
    assert frozen > 100_000  # Django, DRF, litellm's model map...
    assert tracked < frozen / 10  # ...and a full collection walks only what came after
