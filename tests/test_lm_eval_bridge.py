"""lm-evaluation-harness bridge: a ``ropelab.integrations.hf.patch``-ed transformers model evaluated by
``lm_eval`` through ``HFLM(pretrained=model)`` on a tiny local task gives the log-likelihoods of
ropelab's own model with the same method."""

from __future__ import annotations

import json

import pytest
import torch

from ropelab.integrations import hf
from ropelab.model.transformer import Transformer
from ropelab.pretrained.hf_dir import hf_config_to_ropelab

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

VOCAB = 97
CONTEXT = 60  # longer than max_position_embeddings (32): the method matters


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.set_num_threads(1)
    # words w3..w96 are token ids 3..96; special tokens must not look like words (HF matches them first)
    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    data = tmp_path_factory.mktemp("task") / "data.jsonl"
    docs = [
        {"text": " ".join(f"w{(i * 7 + j) % 90 + 5}" for j in range(CONTEXT)), "choices": ["w3", "w4"], "label": i % 2}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    task = {
        "task": "ropelab_tiny_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{text}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=128, batch_size=1)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False)  # do not index lm-eval's thousands of built-in tasks
    return model, (lm, manager), task, docs


def _loglikelihoods(lm, task) -> list[list[float]]:
    lm, manager = lm
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True, bootstrap_iters=0, task_manager=manager)
    samples = sorted(results["samples"][task["task"]], key=lambda s: s["doc_id"])
    return [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]


def _ropelab_loglikelihoods(hf_model, spec: str, docs) -> list[list[float]]:
    config = hf_config_to_ropelab(hf_model.config.to_dict())
    config.pe = spec
    model = Transformer(config).eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in hf_model.state_dict().items()})
    out = []
    for doc in docs:
        ids = torch.tensor([[int(word[1:]) for word in doc["text"].split()]])
        with torch.no_grad():
            logprobs = model(ids)[0, -1].log_softmax(-1)
        out.append([float(logprobs[int(choice[1:])]) for choice in doc["choices"]])
    return out


@pytest.mark.parametrize("spec", ["yarn:factor=2", "hirope:window=16,chunk=8"])
def test_patched_model_through_lm_eval_matches_ropelab(setup, spec):
    model, lm, task, docs = setup
    plain = _loglikelihoods(lm, task)
    hf.patch(model, spec)
    try:
        patched = _loglikelihoods(lm, task)
    finally:
        hf.unpatch(model)
    expected = _ropelab_loglikelihoods(model, spec, docs)
    torch.testing.assert_close(torch.tensor(patched), torch.tensor(expected), atol=1e-4, rtol=0)
    assert (torch.tensor(patched) - torch.tensor(plain)).abs().max() > 1e-3  # the method was in effect
    torch.testing.assert_close(torch.tensor(_loglikelihoods(lm, task)), torch.tensor(plain))  # unpatched again
