"""Building a speech corpus: `python -m launch.build_corpus --config=configs/corpus.py[:size]`.

`size` picks the synthetic corpus's TFDS builder config: `tiny` (seconds, for tests) or
`default` (minutes on 2 cores, for the demo). Sizes themselves (sentences per split,
voices per sentence) live with the builder in data/synthetic_speech/, their one home.
"""

import ml_collections


def get_config(size: str = "default") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "corpus"
    config.corpus = ml_collections.ConfigDict()
    config.corpus.name = "synthetic_speech"
    config.corpus.builder_config = size
    # Parallel synthesis processes; 0 means one per CPU core.
    config.corpus.num_workers = 0
    return config
