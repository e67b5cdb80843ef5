"""Serving the trained chain outside this code base.

qwen3    the LM <-> Hugging Face Qwen3ForCausalLM mapping (config, tensor names and layouts),
         and what Qwen3 cannot express
export   a work dir's LM (HF safetensors + vocabulary layout), codec and acoustic stages
         (safetensors + config) into one folder, and the loaders of the latter two
"""
