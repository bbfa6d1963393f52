"""Mapping rows of one I-LoRA linear layer (peft_hyper ``lora.Linear``).

``lora_B{h}.weight`` [out, r] heads stack into ``lora_B`` [k, r, out]; the head count is
read from the checkpoint's keys, never assumed.
"""

from crab_jax.checkpoints.convert.mapping import LINEAR, IDENTITY, MappingTable, Rule

# The adapter's own weights (what a ``finetune_weights.bin`` holds), by JAX leaf name.
ADAPTER_LEAVES = ("lora_A", "lora_B", "lora_route")


def ilora_rules(torch_prefix: str = "", jax_prefix: str = "", *, bias: bool = True) -> list[Rule]:
    """Rows of ``weight`` (+ ``bias`` if ``bias``) and the adapter's ``lora_A`` / ``lora_B{h}`` / ``lora_route``."""
    rules = [Rule("weight", "weight", LINEAR)]
    if bias:
        rules.append(Rule("bias", "bias", IDENTITY))
    rules += [
        Rule("lora_A.weight", "lora_A", LINEAR),
        Rule("lora_B{head}.weight", "lora_B", LINEAR, stack=("head",)),
        Rule("lora_route.weight", "lora_route", LINEAR),
    ]
    return [r.with_prefix(torch_prefix, jax_prefix) for r in rules]


def is_adapter_rule(rule: Rule) -> bool:
    """Whether a row maps one of the adapter's own weights (not the frozen ``weight`` / ``bias``)."""
    return rule.jax.rsplit(".", 1)[-1] in ADAPTER_LEAVES


def ilora_table() -> MappingTable:
    return MappingTable("ilora_linear", ilora_rules())
