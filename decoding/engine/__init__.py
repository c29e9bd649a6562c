"""The vLLM integration: the only package that imports vLLM.

Everything the product needs from vLLM (the OpenAI server assembly, the engine client,
the served strategy runners, and in later versions logits processors and attention
backends) is reached through this package, so that a vLLM upgrade is a change of this
folder; ``tests/test_vllm_contract.py`` checks every vLLM symbol used here.
"""
