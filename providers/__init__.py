"""The provider side of an LLM call: where a deployment is, how a chat completion is
streamed from it (providers/llm.py: the lean OpenAI-compatible client on
providers/httpstream.py, litellm for every other provider), and the errors a provider
gives. tasks and routing both use it; it imports neither."""
