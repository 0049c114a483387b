"""Signals other apps connect to, so that the tasks app never imports them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent once per task, after the transaction that made it completed, failed or cancelled
# committed; kwargs: task_id (str), status (str), app_id (int, or None when the
# transition's caller did not know it). Receivers run in the process that made
# the transition (a worker, or the web for a cancel): keep them short and hand slow work
# to Celery.
task_finished = Signal()
