"""Mapping rows of one I-LoRA linear layer (peft_hyper ``lora.Linear``).

``lora_B{h}.weight`` [out, r] heads stack into ``lora_B`` [k, r, out]; the head count is
read from the checkpoint's keys, never assumed.
"""

from crab_jax.checkpoints.convert.mapping import LINEAR, IDENTITY, MappingTable, Rule


def ilora_rules(torch_prefix: str = "", jax_prefix: str = "") -> list[Rule]:
    rules = [
        Rule("weight", "weight", LINEAR),
        Rule("bias", "bias", IDENTITY),
        Rule("lora_A.weight", "lora_A", LINEAR),
        Rule("lora_B{head}.weight", "lora_B", LINEAR, stack=("head",)),
        Rule("lora_route.weight", "lora_route", LINEAR),
    ]
    return [r.with_prefix(torch_prefix, jax_prefix) for r in rules]


def ilora_table() -> MappingTable:
    return MappingTable("ilora_linear", ilora_rules())
