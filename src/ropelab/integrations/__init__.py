"""Other libraries' models.

* :mod:`ropelab.integrations.hf`: any ropelab position method inside a Hugging Face ``transformers``
  Llama/Mistral/Qwen2 model (``patch`` / ``unpatch``, recorded in the config so ``save_pretrained``
  keeps it), any ropelab model as a ``transformers`` model (``load``) and patch-on-load
  (``from_pretrained``);
* :mod:`ropelab.integrations.hf_native`: which methods a ``transformers`` config expresses natively;
* :mod:`ropelab.integrations.hf_export`: ``ropelab export --format hf``;
* :mod:`ropelab.integrations.lm_eval_plugin`: the lm-evaluation-harness model ``ropelab``
  (imports ``lm_eval``; not imported by this package).
"""
