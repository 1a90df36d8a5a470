"""serve: the OpenAI-compatible HTTP server over the engine (serve.openai_server)."""
