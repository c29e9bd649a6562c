"""Code that runs inside the vLLM engine process (model runner, attention, sampler).

Importing this package never touches CUDA; :func:`decoding.engine.worker.plugin.register`
is the ``vllm.general_plugins`` entry point that makes vLLM load the pieces.
"""
