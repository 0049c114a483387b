"""Development tools: the LLM simulator and the helpers that find or start PostgreSQL and
Redis for the tests and the benchmark. Not part of the product: nothing in mageagent/,
tasks/, routing/ or tools/ imports this package."""
