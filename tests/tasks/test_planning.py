"""Planning helpers: reference crops."""

import numpy as np


def test_voice_crop_widens_the_reference_inside_its_utterance():
    from types import SimpleNamespace

    from gpa_jax.tasks.planning import REF, REF_LEN, REF_START, voice_crop

    bank = SimpleNamespace(frames=np.array([400, 120]))
    row = np.zeros(5, np.int64)
    row[REF], row[REF_START], row[REF_LEN] = 0, 300, 50
    assert voice_crop(bank, row, 150) == (0, 250, 150)  # moved back to fit the utterance
    assert voice_crop(bank, row, 30) == (0, 300, 50)  # never shorter than the planned crop
    row[REF], row[REF_START], row[REF_LEN] = 1, 10, 50
    assert voice_crop(bank, row, 150) == (1, 0, 120)  # the whole utterance when shorter
