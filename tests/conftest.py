"""Test-wide settings: the suite's models are tiny, so one thread is fastest and avoids
oversubscribing the 2-core CI machine."""

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from ropelab.pretrained.tokenizer import Tokenizer
from tests.helpers import NESTED_JS

# the asserts of the shared builders report their operands, as the test modules' own do
pytest.register_assert_rewrite("tests.helpers")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models, the previous number restored after it:
    more threads only add overhead, and on a busy 2-core machine OpenMP oversubscription made
    each forward ~100x slower. Used as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- fixtures of the bad-input tests (tests/test_input_*.py) ------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small byte-level BPE: 4-byte characters become several tokens, as in real models."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator([NESTED_JS * 50 + "}" * 50, "def f(x):\n    return x\n" * 20], trainer)
    return Tokenizer(backend, name="test-bpe")


# -- output paths and run directories ----------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    from ropelab import ModelConfig, Transformer, save_checkpoint

    tokenizer.save(tmp_path / "tok")
    config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=64)
    return save_checkpoint(tmp_path / "ckpt", Transformer(config), tokenizer=str(tmp_path / "tok" / "tokenizer.json"))


# == hostile metadata, huge costs, loading side effects, races ==================================
# Each test below covers one class of the issue "bad and hostile input": corrupt run files,
# model metadata, small inputs with huge costs, a GGUF's folder, the first-use race, the data
# wheels' checksums, and latest.json. Helpers shared with tests/test_fuzz_metadata.py come first.


#: the metadata :func:`write_tiny_gguf` writes (``llama.`` keys without the prefix)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, private $ROPELAB_HOME (the model cache)."""
    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def loadable(checkpoint, tokenizer):
    """The checkpoint with its tokenizer beside it, as ``load_model`` finds it."""
    tokenizer.save(checkpoint)
    return checkpoint
