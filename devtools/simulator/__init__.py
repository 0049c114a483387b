"""OpenAI-compatible LLM simulator -- a development/test/benchmark tool (not production).

Standalone: imports only the stdlib, aiohttp and orjson (never Django).
See :mod:`devtools.simulator.server` for the protocol, directive and stats API.
"""

from .server import (
    SIMULATOR_KEY,
    Scheduler,
    SimConfig,
    Simulator,
    SimulatorProcess,
    SimulatorThread,
    Stats,
    error_response,
    find_directive,
    parse_directive,
    split_text,
    start_simulator,
)

__all__ = (
    "SIMULATOR_KEY",
    "Scheduler",
    "SimConfig",
    "Simulator",
    "SimulatorProcess",
    "SimulatorThread",
    "Stats",
    "error_response",
    "find_directive",
    "parse_directive",
    "split_text",
    "start_simulator",
)
