"""Other libraries' models.

* :mod:`ropelab.integrations.hf`: any ropelab position method inside a Hugging Face ``transformers``
  model (``patch`` / ``unpatch``, recorded in the config so ``save_pretrained`` keeps it), any ropelab
  model as a ``transformers`` model (``load``) and patch-on-load (``from_pretrained``); its parts:
  :mod:`~ropelab.integrations.hf_families` (the families and where their modules are),
  :mod:`~ropelab.integrations.hf_rotary` (the rotary tables), :mod:`~ropelab.integrations.hf_window`
  (windowed methods through the attention hook), :mod:`~ropelab.integrations.hf_load` (checkpoints
  and directories as ``transformers`` models);
* :mod:`ropelab.integrations.hf_native`: which methods a ``transformers`` config expresses natively;
* :mod:`ropelab.integrations.hf_export`: ``ropelab export --format hf``;
* :mod:`ropelab.integrations.lm_eval_plugin`: the lm-evaluation-harness model ``ropelab``
  (imports ``lm_eval``; not imported by this package).
"""
