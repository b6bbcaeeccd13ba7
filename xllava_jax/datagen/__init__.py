"""mvif data generation (X-LLaVA section 3) and dataset/benchmark translation via an OpenAI-compatible API."""
