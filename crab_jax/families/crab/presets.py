"""Small Crab configurations built in code (tests, the CPU demo), no files needed."""

from __future__ import annotations

from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.families.crab.model import CrabConfig
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qformer import QFormerConfig
from crab_jax.models.seg import SegConfig
from crab_jax.families.crab.tokens import PAD_TOKEN_ID, special_token_ids

def tiny_crab_config(*, base_vocab: int = 64, hidden: int = 32, image_size: int = 56, patch: int = 14,
                     lora_heads: int = 3, seg_queries: int = 16) -> CrabConfig:
    """A Crab small enough for CPU tests: every component present, widths of a few dozen."""
    tokens = special_token_ids(base_vocab)
    vision = ClipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                              patch_size=patch, image_size=image_size)
    beats = BeatsConfig(embed_dim=16, encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32,
                        encoder_attention_heads=2, conv_pos=4, conv_pos_groups=2, deep_norm=True,
                        relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True,
                        dropout=0.0, attention_dropout=0.0, finetuned_model=False)
    bert = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=8,
                max_position_embeddings=8, layer_norm_eps=1e-12, hidden_act="gelu")
    grid = (image_size // patch) ** 2

    def qformer(width):
        return QFormerConfig.from_bert_config(bert, num_hidden_layers=1, encoder_width=width, num_query_tokens=2,
                                              d_model=hidden, tokens_per_frame=grid)

    return CrabConfig(
        llama=LlamaConfig(vocab_size=len(tokens) + base_vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5),
        clip=ClipEncoderConfig(vision, select_layer_list=(1, 2, 3)),
        beats=beats,
        visual_qformer=qformer(vision.hidden_size),
        audio_qformer=qformer(beats.encoder_embed_dim),
        lora=ILoRAConfig(r=4, alpha=8, num_heads=lora_heads, dropout=0.0),
        seg=SegConfig(d_model=hidden, vit_dim=vision.hidden_size, prompt_embed_dim=16, depth=1, qg_layers=1,
                      avs_query_num=seg_queries, low_res_mask_size=2 * image_size // patch * 2,
                      image_size=image_size, patch_size=patch, two_way_mlp_dim=32, two_way_heads=2,
                      query_generator_heads=2, query_generator_ffn=32),
        special_token_ids=tokens,
        pad_token_id=PAD_TOKEN_ID,
    )
