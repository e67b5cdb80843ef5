"""Evaluation: turning generations into comparable numbers.

- acoustic_stages: acoustic stages (NAR, vocoder) against the codec's bounds (mel
  distance, speaker similarity); `python -m launch.eval_acoustic`
- asr_metrics: WER / CER (jiwer) on normalised transcripts; judge WER reports (Whisper's
  normaliser, corpus and mean per-utterance WER, per voice)
- judge: independent judge ASR for TTS / VC intelligibility (Whisper tiny.en by default;
  pocketsphinx, any local faster-whisper model)
- results: samples/<task>/ wavs + manifest.jsonl, eval/results.{json,md}
- speaker: speaker-similarity encoder (pluggable, offline; Resemblyzer by default)
"""
