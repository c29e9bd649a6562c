"""Pure torch functions of the strategies (no vLLM, no model): one module per method.

``contrastive`` (the VCD rule and the token choice), ``vcd`` (diffusion noise), ``avc``
(blind tokens), ``damro`` ([CLS] outliers), ``opera`` (over-trust score, penalty,
retrospection), ``beam`` (beam bookkeeping), ``var`` (sinks and redistribution). The
reference engine and the served path both call these, so the math exists once.
"""
