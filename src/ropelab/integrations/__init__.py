"""Other libraries' models: :mod:`ropelab.integrations.hf` patches a Hugging Face ``transformers``
Llama/Mistral/Qwen2 model to run any ropelab position method (``patch`` / ``unpatch``), which is
also how lm-evaluation-harness runs them."""
