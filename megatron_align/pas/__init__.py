"""PAS, the report's Prompt Augmentation System: a model that appends a short complement to a user prompt.

``records``: reading prompt JSONL, stable prompt ids, the resumable append-only output.
``formats``: the generation / critique prompts (the report's rules), the training format, reply parsing.
``teachers``: the :class:`Teacher` interface over a megatron_align checkpoint or an OpenAI-compatible endpoint.
``openai_http``: the HTTP client (retries, backoff, timeouts, concurrency, rate limit); stdlib only.
``generate``: complement generation with critique and regeneration (``megatron-align pas generate``).
``augment``: the inference-time step (``megatron-align pas augment``).
``server``: a minimal OpenAI-compatible server over our engine (``megatron-align pas serve``).
"""
