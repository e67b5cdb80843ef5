"""Serving the trained chain: outside this code base (export) and over HTTP (server).

qwen3    the LM <-> Hugging Face Qwen3ForCausalLM mapping (config, tensor names and layouts),
         and what Qwen3 cannot express
export   a work dir's LM (HF safetensors + vocabulary layout), codec and acoustic stages
         (safetensors + config) into one folder, and the loaders of the latter two
inputs   request fields and audio files -> sampler requests (shared by launch.sample)
server   the HTTP server (OpenAI-style endpoints over the continuous-batching engine)
loadtest mixed TTS / ASR / VC load over HTTP (closed loop, Poisson open loop): latency,
         RTF and throughput figures, and quality under load vs one by one

Import the modules themselves (`from gpa_jax.serving import server`); nothing is
imported here, so the lighter parts load without the server's web dependencies.
"""
