"""Training data: a corpus of text files, a tokenizer, packed token arrays, a deterministic order.

    corpus = Corpus.from_sources(["stdlib"])              # or directories, files, globs
    data = prepare_data(corpus, tokenizer="bpe-8k")       # cached under $ROPELAB_HOME/data/<hash>
    sampler = ChunkSampler(data.train, seq_len=256, seed=0)
    batch = sampler.batch(start=0, count=16)              # [16, 257] token ids

See :mod:`ropelab.data.corpus` (sources, skipping, split by file), :mod:`ropelab.data.tokens`
(BPE training, packing, cache) and :mod:`ropelab.data.loader` (the order of samples).
"""

from ropelab.data.corpus import STDLIB, Corpus, CorpusFile
from ropelab.data.loader import ChunkSampler, evenly_spaced_chunks
from ropelab.data.tokens import TokenData, open_data, prepare_data, train_bpe

__all__ = [
    "STDLIB",
    "ChunkSampler",
    "Corpus",
    "CorpusFile",
    "TokenData",
    "evenly_spaced_chunks",
    "open_data",
    "prepare_data",
    "train_bpe",
]
