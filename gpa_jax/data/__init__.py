"""Grain readers for the training host (no TensorFlow, no seqio).

batch_cache   packed, mixed LM batches cached once to ArrayRecord (written by
              `launch.cache_batches` from the SeqIO mixture) and read back with Grain,
              resumable by batch index
"""
