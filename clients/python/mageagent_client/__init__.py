"""A client of the MageAgent task API: `MageAgent(url, api_key)`; the `mageagent` command."""

from __future__ import annotations

from .client import AnswerRestarted, MageAgent, MageAgentError

__all__ = ["AnswerRestarted", "MageAgent", "MageAgentError"]
__version__ = "0.1.0"
