"""Noisy versions of clean utterances, made offline for speech enhancement (SE).

    pool = BabblePool.from_clips(ids, speakers, wavs)      # other utterances of the split
    noisy = make_noisy(clean, "utt-7", "alice", pool, NoiseSettings(seed=0))
    noisy.wav, noisy.snr_db, noisy.kind                    # the mixture and how it was made

Each example draws, from its own generator `example_rng(seed, id)` (so the result
depends on the seed and the utterance id only, never on which utterances were processed
before it or in which order):

1. a noise kind, uniformly from `settings.kinds`: coloured noise whose power spectrum
   falls as 1 / f**exponent (white 0, pink 1, brown 2; Gaussian noise shaped in the
   rFFT domain) or babble, the sum of `babble_talkers` utterances of the pool spoken by
   other speakers than the clean one (each at unit RMS, from a random start, looped
   where shorter). Babble for a speaker with no other speaker in the pool falls back to
   a colour drawn by the same generator, and says so in `Noisy.kind`;
2. an SNR, uniformly in [settings.snr_db[0], settings.snr_db[1]] dB;
3. the noise itself, scaled so that 10 log10(P_clean / P_noise) is that SNR exactly
   (powers over the whole utterance). A mixture whose peak would clip (|x| > PEAK) is
   scaled down as a whole (`Noisy.gain`), which keeps the SNR.

The default range, 0-15 dB, is that of VoiceBank-DEMAND's training mixtures (0, 5, 10,
15 dB), the usual SE benchmark: below 0 dB the tiny codec's RVQ-1 keeps little of the
speech to restore, above 15 dB the codec's own distortion dominates the noise.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np

# Power spectrum ~ 1 / f**exponent.
COLOURS: dict[str, float] = {"white": 0.0, "pink": 1.0, "brown": 2.0}
KINDS: tuple[str, ...] = (*COLOURS, "babble")
SNR_RANGE_DB = (0.0, 15.0)
BABBLE_TALKERS = 3
BABBLE_POOL = 32
PEAK = 0.99


@dataclasses.dataclass(frozen=True)
class NoiseSettings:
    """How a split's noisy inputs are made (stored in its token manifest, `as_dict`)."""

    seed: int = 0
    snr_db: tuple[float, float] = SNR_RANGE_DB
    kinds: tuple[str, ...] = KINDS
    babble_talkers: int = BABBLE_TALKERS

    def __post_init__(self) -> None:
        low, high = (float(x) for x in self.snr_db)
        object.__setattr__(self, "snr_db", (low, high))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if not low <= high:
            raise ValueError(f"noise SNR range {self.snr_db} needs low <= high (dB)")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"noise kinds {list(self.kinds)}: expected some of {KINDS}")
        if self.babble_talkers < 1:
            raise ValueError(f"babble_talkers={self.babble_talkers} must be >= 1")

    def as_dict(self) -> dict:
        return {"seed": int(self.seed), "snr_db": list(self.snr_db), "kinds": list(self.kinds),
                "babble_talkers": int(self.babble_talkers)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> NoiseSettings:
        return cls(int(d["seed"]), tuple(d["snr_db"]), tuple(d["kinds"]), int(d["babble_talkers"]))


@dataclasses.dataclass(frozen=True)
class BabblePool:
    """Utterances babble is made of: ids, their speakers and waveforms (one rate)."""

    ids: tuple[str, ...]
    speakers: tuple[str, ...]
    wavs: tuple[np.ndarray, ...]

    @classmethod
    def from_clips(
        cls, ids: Sequence[str], speakers: Sequence[str], wavs: Sequence[np.ndarray]
    ) -> BabblePool:
        if not len(ids) == len(speakers) == len(wavs):
            raise ValueError("babble pool: ids, speakers and wavs differ in length")
        keep = [i for i, w in enumerate(wavs) if _power(np.asarray(w, np.float64)) > 0]
        return cls(tuple(str(ids[i]) for i in keep), tuple(str(speakers[i]) for i in keep),
                   tuple(np.asarray(wavs[i], np.float32) for i in keep))  # fmt: skip

    def others(self, utt_id: str, speaker: str) -> np.ndarray:
        """Pool indices of utterances by other speakers than `speaker` (never `utt_id`)."""
        return np.array([i for i, (u, s) in enumerate(zip(self.ids, self.speakers, strict=True))
                         if s != speaker and u != utt_id], np.int64)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Noisy:
    """A noisy version of a clean clip: wav = gain * (clean + noise)."""

    wav: np.ndarray  # float32, len(clean)
    snr_db: float  # the SNR drawn and mixed at
    kind: str  # white | pink | brown | babble
    gain: float  # the peak guard's scale (1 when the mixture does not clip)
    babble_ids: tuple[str, ...] = ()  # the pool utterances of babble noise


def example_rng(seed: int, utt_id: str) -> np.random.Generator:
    """The generator of one example: a function of the seed and the utterance id only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(utt_id.encode("utf-8"))])


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """float64 [n] Gaussian noise with power spectrum ~ 1 / f**exponent, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0  # DC keeps its (white) level instead of an infinite one
    noise = np.fft.irfft(spectrum / f ** (exponent / 2.0), n)
    noise -= noise.mean()
    return noise / np.sqrt(max(_power(noise), 1e-20))


def babble(n: int, pool: BabblePool, picks: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """float64 [n]: the pool clips `picks`, each at unit RMS from a random start (looped
    where shorter than n), summed and brought to unit RMS."""
    total = np.zeros(n, np.float64)
    for k in picks:
        clip = np.asarray(pool.wavs[k], np.float64)
        clip = clip / np.sqrt(_power(clip))
        start = int(rng.integers(len(clip)))
        total += np.resize(np.roll(clip, -start), n)
    return total / np.sqrt(max(_power(total), 1e-20))


def measured_snr_db(clean: np.ndarray, noisy: Noisy) -> float:
    """10 log10(P_clean / P_noise) of a mixture, the noise being wav / gain - clean."""
    clean = np.asarray(clean, np.float64)
    noise = np.asarray(noisy.wav, np.float64) / noisy.gain - clean
    return 10.0 * np.log10(_power(clean) / _power(noise))


def make_noisy(
    clean: np.ndarray, utt_id: str, speaker: str, pool: BabblePool | None, settings: NoiseSettings
) -> Noisy:
    """The noisy version of utterance `utt_id` (module docstring); `pool` may be None when
    settings.kinds has no babble."""
    clean = np.asarray(clean, np.float64)
    if clean.ndim != 1 or not len(clean) or _power(clean) == 0:
        raise ValueError(f"{utt_id}: clean audio must be a non-silent 1-D waveform")
    rng = example_rng(settings.seed, utt_id)
    kind = settings.kinds[int(rng.integers(len(settings.kinds)))]
    snr_db = float(rng.uniform(*settings.snr_db))
    babble_ids: tuple[str, ...] = ()
    others = pool.others(utt_id, speaker) if kind == "babble" and pool is not None else []
    if kind == "babble" and len(others):
        picks = rng.choice(others, min(settings.babble_talkers, len(others)), replace=False)
        noise = babble(len(clean), pool, picks, rng)
        babble_ids = tuple(pool.ids[int(k)] for k in picks)
    else:
        if kind == "babble":  # no other speaker to babble with: a colour instead
            kind = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
        noise = coloured_noise(len(clean), COLOURS[kind], rng)
    noise *= np.sqrt(_power(clean) / 10.0 ** (snr_db / 10.0))
    mixture = clean + noise
    peak = float(np.max(np.abs(mixture)))
    gain = min(1.0, PEAK / peak) if peak > 0 else 1.0
    return Noisy((gain * mixture).astype(np.float32), snr_db, kind, gain, babble_ids)
