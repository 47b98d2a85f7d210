"""The forward pass and the training step read no tensor value on the host: on a GPU every such
read (``.item()``, ``int(tensor)``, ``bool(tensor)``) stalls the device until it catches up. Inputs
are checked once where they enter (``ropelab.model.inputs.check_inputs``), not here."""

from __future__ import annotations

import pytest
import torch

from ropelab import ModelConfig, Transformer
from tests.helpers import host_reads

SPECS = (
    "rope", "hope", "nope", "alibi", "kerple-log", "kerple-power", "fire", "learned", "pi:factor=2",
    "yarn:factor=2", "dynamic-ntk:factor=2", "rerope:window=8", "self-extend:window=8,group=3",
    "hirope:window=8", "hope+yarn:factor=2",
)  # fmt: skip


def _model(spec: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name("tiny", vocab_size=61, train_len=64, pe=spec)).eval()


@pytest.mark.parametrize("spec", SPECS)
def test_the_forward_pass_reads_nothing_on_the_host(spec):
    model = _model(spec)
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids)  # warm: one-off work (a learned table's check, tables built once) is allowed before
        with host_reads() as reads:
            model(ids)
            cache = model.new_cache()
            model(ids[:, :30], cache=cache)
            for t in range(30, 33):  # decoding steps
                model(ids[:, t : t + 1], cache=cache)
            if not model.pe.is_windowed and not model.pe.rotation_depends_on_length:
                mask = torch.ones(2, 40, dtype=torch.bool)
                mask[0, :5] = False  # a left-padded row (the two exceptions: see ropelab.model.inputs)
                model(ids, attention_mask=mask)
    assert reads == [], spec


def test_hierarchical_positions_are_not_read_either():
    model = _model("hirope:window=8")
    ids = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(2))
    positions = torch.stack((torch.arange(40), torch.arange(40) // 6), dim=-1)[None]
    with torch.no_grad():
        model(ids, positions=positions)
        with host_reads() as reads:
            model(ids, positions=positions)
    assert reads == []


@pytest.mark.parametrize("spec", ["rope", "fire", "alibi"])
def test_the_training_step_reads_nothing_on_the_host(tmp_path, spec):
    from ropelab.train import distributed
    from ropelab.train.config import TrainConfig
    from ropelab.train.trainer import Trainer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def f(x):\n    return x + 1\n" * 400)
    config = TrainConfig(
        pe=spec, train_len=32, steps=3, batch_size=4, micro_batch_size=2, tokenizer="bpe-300", data=[str(corpus)]
    )
    config.validate()
    trainer = Trainer(config, tmp_path / "run", distributed.setup("cpu"), progress=False)
    trainer.setup()
    trainer.net, trainer.interval_tokens = trainer.model, 0  # what fit() sets before its loop
    trainer.train_step()  # warm
    with host_reads() as reads:
        trainer.train_step()
    assert reads == [], spec
