"""Evaluation: turning generations into comparable numbers.

- asr_metrics: WER / CER (jiwer) on normalised transcripts
- judge: independent judge ASR for TTS / VC intelligibility (pocketsphinx, faster-whisper)
- results: samples/<task>/ wavs + manifest.jsonl, eval/results.{json,md}
- speaker: speaker-similarity encoder (pluggable, offline)
"""
