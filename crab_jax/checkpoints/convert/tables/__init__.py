"""Mapping tables of the shared components (``crab_jax.models``), for every family's converter.

:mod:`.ilora` (one I-LoRA linear layer), :mod:`.llama` (the LLaMA / Qwen2 decoder of
``crab_jax.models.llama``). A family composes them under its own prefixes; tables of
family-only modules stay in ``crab_jax/families/<name>/convert/``.
"""
