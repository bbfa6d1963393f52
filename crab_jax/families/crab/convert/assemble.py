"""User files -> one lazily read Crab state dict (original names) + the matching configs.

Every source is a set of tensors plus the Crab component its keys are relative to
(``None``: keys already carry Crab's full ``base_model.model.`` names, as in Crab's ``.bin``
files and full state dicts). :class:`CrabView` renames each source's keys into the full
names, and later sources override earlier ones key by key (the avs ``.bin``'s 317-row
``embed_tokens`` replaces the LLaMA folder's 300 rows); every override is recorded.

Keys that exist in no user file are generated, and said so (:attr:`CrabView.notes`):

* the two random Fourier matrices of the seg module (Crab's save functions collect
  parameters only; the original redraws them at every build): drawn from ``N(0, pe_scale²)``
  with the given seed;
* the Q-Former ``position_ids`` buffers (``arange``).

Config: a whole Crab is sized by :func:`crab_config_from_original` from the union of the
shapes; a subset of components (one BEATs ``.pt``, one projector file) gets one config
section per component (``crab_jax.families.crab.config_io``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np

from crab_jax.models.beats import Beats, BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig, ClipVisualEncoder
from crab_jax.models.ilora import DEFAULT_TARGETS, ILoRAConfig
from crab_jax.models.llama import LlamaConfig, LlamaForCausalLM
from crab_jax.families.crab.tokens import NUM_ADDED_TOKENS, NUM_MASK_TOKENS, special_token_ids
from crab_jax.models.qformer import AudioProjector, QFormerConfig, VisualProjector
from crab_jax.models.seg import SegConfig, SegModule
from crab_jax.families.crab.convert.clip_table import split_clip_vision_keys
from crab_jax.families.crab.convert.crab_config import crab_config_from_original
from crab_jax.families.crab.convert.crab_table import COMPONENT_PREFIXES, CRAB_PREFIX, component_tables
from crab_jax.checkpoints.convert.tensor_files import KeySubset, TensorFile
from crab_jax.checkpoints.convert.mapping import MappingTable

COMPONENTS = tuple(COMPONENT_PREFIXES)  # llm, visual_encoder, audio_encoder, vl_projector, al_projector, seg_module
# Config sections that size each component.
COMPONENT_SECTIONS = {
    "llm": ("llama", "lora"), "visual_encoder": ("clip",), "audio_encoder": ("beats",),
    "vl_projector": ("visual_qformer",), "al_projector": ("audio_qformer",), "seg_module": ("seg",),
}
SEG_BUFFERS = ("seg_module.pe_layer.positional_encoding_gaussian_matrix",
               "seg_module.mask_decoder.pe1.positional_encoding_gaussian_matrix")


@dataclasses.dataclass
class Source:
    """One user file: ``tensors`` keyed relative to ``component`` (None: full Crab names)."""

    path: str
    tensors: Mapping[str, np.ndarray]
    component: str | None = None
    config: dict | None = None  # HF config.json or BEATs cfg
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> why it is not loaded


def hf_clip_source(path: str, config: dict, tensors: TensorFile) -> Source:
    """A CLIP (vision) folder: keys that are not part of the vision tower are set aside, with reasons."""
    keep, ignored = split_clip_vision_keys(tensors.keys())
    return Source(path, KeySubset(tensors, keep), "visual_encoder", config, ignored)


def crab_name(component: str | None, key: str) -> str:
    return key if component is None else COMPONENT_PREFIXES[component][0] + key


def component_of(crab_key: str) -> str | None:
    """The component a full Crab torch name belongs to (None if none)."""
    best, best_len = None, -1
    for name, (prefix, _) in COMPONENT_PREFIXES.items():
        if crab_key.startswith(prefix) and len(prefix) > best_len:
            best, best_len = name, len(prefix)
    if best == "llm" and crab_key.startswith(CRAB_PREFIX) and not re.match(
            re.escape(CRAB_PREFIX) + r"(embed_tokens|layers|norm)\.", crab_key):
        return None  # a Crab module the LLM table does not know (reported as unexpected)
    return best


class CrabView(Mapping):
    """Lazy ``full Crab torch name -> array`` over several sources (later ones win).

    ``cast`` (a numpy float dtype) is applied to floating tensors as they are read, so the
    converted model is only ever held in the output dtype.
    """

    def __init__(self, sources: Sequence[Source], cast: np.dtype | None = None):
        self.sources = list(sources)
        self.cast = cast
        self._origin: dict[str, tuple[Source, str]] = {}
        self._generated: dict[str, Callable[[], np.ndarray]] = {}
        self.notes: list[str] = []
        for src in self.sources:
            for key in src.tensors.keys():
                name = crab_name(src.component, key)
                if name in self._origin:
                    prev, prev_key = self._origin[name]
                    self.notes.append(f"{name}: {src.path} {_shape(src.tensors, key)} overrides "
                                      f"{prev.path} {_shape(prev.tensors, prev_key)}")
                self._origin[name] = (src, key)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._generated:
            return tuple(self._generated[name]().shape)
        src, key = self._origin[name]
        return _shape(src.tensors, key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self}

    def origin(self, name: str) -> str:
        return "generated" if name in self._generated else self._origin[name][0].path

    def generate(self, name: str, make: Callable[[], np.ndarray], note: str) -> None:
        """Adds a key found in no source (``make`` builds it on read)."""
        self._generated[name] = make
        self.notes.append(f"{name}: in no source file; {note}")

    def components(self) -> list[str]:
        present = {component_of(k) for k in self._origin}
        return [c for c in COMPONENTS if c in present]

    def __getitem__(self, name):
        if name in self._generated:
            value = self._generated[name]()
        else:
            src, key = self._origin[name]
            value = np.asarray(src.tensors[key])
        floating = np.issubdtype(value.dtype, np.floating) or _is_bf16(value)
        if self.cast is not None and floating and value.dtype != self.cast:
            value = value.astype(self.cast)
        return value

    def __iter__(self):
        yield from self._origin
        yield from (k for k in self._generated if k not in self._origin)

    def __len__(self):
        return len(set(self._origin) | set(self._generated))


def _is_bf16(a) -> bool:
    return a.dtype.name == "bfloat16"


def _shape(tensors, key) -> tuple[int, ...]:
    shape = getattr(tensors, "shape", None)
    if callable(shape):
        return tuple(shape(key))
    return tuple(np.shape(tensors[key]))


# -- configs ----------------------------------------------------------------------------------

@dataclasses.dataclass
class ConfigOptions:
    """What no weight file says, from the command line (defaults: the released Crab)."""

    bert_config: dict | None = None
    select_layer_list: tuple[int, ...] = (14, 22, 23)
    select_feature: str = "patch"
    pad_token_id: int = 2
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    special_token_ids: dict | None = None
    seg: dict | None = None  # SegConfig fields overriding the ones read from shapes
    llama_config: dict | None = None
    clip_config: dict | None = None
    beats_cfg: dict | None = None


def _count(shapes, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.match(k)] if m})


def _need(shapes, key: str, why: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot size {why}: no tensor {key!r} in the sources")
    return tuple(shapes[key])


def _source_config(sources: Sequence[Source], component: str):
    found = [s.config for s in sources if s.component == component and s.config is not None]
    return found[-1] if found else None


def lora_options(shapes: Mapping[str, Sequence[int]], opts: ConfigOptions) -> dict | None:
    """The original's LoRA dict (alpha / dropout from the options; targets from the keys)."""
    targets = sorted({m.group(1) for k in shapes for m in [re.match(r".*\.(\w+)\.lora_A\.weight$", k)] if m})
    if not targets:
        return None
    return {"lora_alpha": opts.lora_alpha, "lora_dropout": opts.lora_dropout,
            "target_modules": [t for t in DEFAULT_TARGETS if t in targets] + [t for t in targets if t not in DEFAULT_TARGETS]}


def seg_options(shapes: Mapping[str, Sequence[int]], opts: ConfigOptions) -> dict:
    """SegConfig fields read from the seg module's tensor shapes (+ ``opts.seg`` overrides)."""
    p = CRAB_PREFIX + "seg_module."
    seg = {
        "prompt_embed_dim": _need(shapes, p + "no_mask_embed.weight", "the seg module")[1],
        "depth": _count(shapes, re.escape(p) + r"mask_decoder\.transformer\.0\.layers\.(\d+)\."),
        "qg_layers": _count(shapes, re.escape(p) + r"mask_decoder\.query_generator\.layers\.(\d+)\."),
        "image_scale_nums": _need(shapes, p + "mask_decoder.level_embed.weight", "the seg module")[0],
        "avss_classes": _need(shapes, p + "mask_decoder.avss_classifier.weight", "the seg module")[0],
        "binary_classes": _need(shapes, p + "mask_decoder.ms3_s4_classfier.weight", "the seg module")[0],
    }
    ffn = p + "mask_decoder.query_generator.layers.0.ffn.0.weight"
    if ffn in shapes:
        seg["query_generator_ffn"] = shapes[ffn][0]
    mlp = p + "mask_decoder.transformer.0.layers.0.mlp.lin1.weight"
    if mlp in shapes:
        seg["two_way_mlp_dim"] = shapes[mlp][0]
    seg.update(opts.seg or {})
    return seg


def default_special_tokens(vocab: int, base_vocab: int | None) -> dict[str, int]:
    """Crab's added tokens after the base vocabulary (inferred as ``vocab - 17`` if not known)."""
    added = NUM_ADDED_TOKENS
    base = vocab - added if base_vocab is None or base_vocab == vocab else base_vocab
    if base + added != vocab:
        raise ValueError(f"embed_tokens has {vocab} rows but the base vocabulary {base} + {added} added tokens "
                         f"= {base + added}; pass --special-tokens")
    return special_token_ids(base, NUM_MASK_TOKENS)


def whole_crab_config(view: CrabView, opts: ConfigOptions):
    """The CrabConfig of a view holding every component (sizes from shapes)."""
    shapes = view.shapes()
    llama = opts.llama_config or _source_config(view.sources, "llm")
    clip = opts.clip_config or _source_config(view.sources, "visual_encoder")
    beats = opts.beats_cfg or _source_config(view.sources, "audio_encoder")
    missing = [n for n, v in (("a LLaMA config.json (--llama DIR)", llama), ("a CLIP config.json (--clip DIR)", clip),
                              ("a BEATs cfg (--beats FILE.pt)", beats), ("--bert-config", opts.bert_config)) if v is None]
    if missing:
        raise ValueError(f"sizing a whole Crab needs {', '.join(missing)}")
    vocab = _need(shapes, CRAB_PREFIX + "embed_tokens.weight", "the LLM")[0]
    tokens = opts.special_token_ids or default_special_tokens(vocab, llama.get("vocab_size"))
    seg = seg_options(shapes, opts) if any(component_of(k) == "seg_module" for k in shapes) else None
    return crab_config_from_original(
        shapes, llama_config=llama, clip_config=clip, beats_cfg=beats, bert_config=opts.bert_config,
        select_layer_list=opts.select_layer_list, select_feature=opts.select_feature, special_token_ids=tokens,
        pad_token_id=opts.pad_token_id, lora=lora_options(shapes, opts), seg=seg)


def _qformer_section(shapes, module: str, prefix: str, bert: dict | None) -> QFormerConfig:
    if bert is None:
        raise ValueError(f"sizing {module} needs --bert-config (the Q-Former's BERT config.json)")
    p = f"{CRAB_PREFIX}{module}."
    cross = _need(shapes, f"{p}{prefix}_Qformer.bert.encoder.layer.0.crossattention.self.key.weight", module)
    return QFormerConfig.from_bert_config(
        bert, num_hidden_layers=_count(shapes, rf"{re.escape(p)}{prefix}_Qformer\.bert\.encoder\.layer\.(\d+)\."),
        encoder_width=cross[1], num_query_tokens=_need(shapes, f"{p}{prefix}_query_tokens", module)[1],
        d_model=_need(shapes, f"{p}{prefix}_proj.0.weight", module)[0],
        mlp_depth=_count(shapes, rf"{re.escape(p)}{prefix}_proj\.(\d+)\.weight"))


def component_sections(view: CrabView, components: Sequence[str], opts: ConfigOptions) -> dict[str, Any]:
    """Config sections of a subset of components, each sized from its own tensors."""
    shapes = view.shapes()
    out: dict[str, Any] = {}
    if "llm" in components:
        hf = opts.llama_config or _source_config(view.sources, "llm")
        if hf is None:
            raise ValueError("sizing the LLM needs a LLaMA config.json (--llama DIR or --llama-config)")
        vocab = _need(shapes, CRAB_PREFIX + "embed_tokens.weight", "the LLM")[0]
        out["llama"] = LlamaConfig.from_hf(dict(hf, vocab_size=vocab))
        lora = lora_options(shapes, opts)
        out["lora"] = None if lora is None else ILoRAConfig(
            r=next(v[0] for k, v in shapes.items() if k.endswith("lora_A.weight")), alpha=lora["lora_alpha"],
            num_heads=_count(shapes, r".*\.lora_B(\d+)\.weight$"), dropout=lora["lora_dropout"],
            targets=tuple(lora["target_modules"]))
    if "visual_encoder" in components:
        hf = opts.clip_config or _source_config(view.sources, "visual_encoder")
        if hf is None:
            raise ValueError("sizing the CLIP tower needs its config.json (--clip DIR or --clip-config)")
        vision = ClipVisionConfig.from_hf(hf)
        layers = tuple(opts.select_layer_list)
        if max(layers) > vision.num_hidden_layers:
            raise ValueError(f"--select-layers {list(layers)} exceed the tower's {vision.num_hidden_layers} layers")
        out["clip"] = ClipEncoderConfig(vision, select_layer_list=layers, select_feature=opts.select_feature)
    if "audio_encoder" in components:
        cfg = opts.beats_cfg or _source_config(view.sources, "audio_encoder")
        if cfg is None:
            raise ValueError("sizing BEATs needs the cfg of a BEATs .pt (--beats FILE.pt)")
        out["beats"] = BeatsConfig.from_checkpoint_cfg(cfg)
    if "vl_projector" in components:
        out["visual_qformer"] = _qformer_section(shapes, "vl_projector", "visual", opts.bert_config)
    if "al_projector" in components:
        out["audio_qformer"] = _qformer_section(shapes, "al_projector", "audio", opts.bert_config)
    if "seg_module" in components:
        p = CRAB_PREFIX + "seg_module."
        seg = seg_options(shapes, opts)
        seg.update(d_model=_need(shapes, p + "text_hidden_fcs.0.0.weight", "the seg module")[1],
                   vit_dim=_need(shapes, p + "image_feature_neck.0.weight", "the seg module")[1],
                   avs_query_num=_need(shapes, p + "mask_decoder.avs_query_tokens.weight", "the seg module")[0])
        out["seg"] = SegConfig.from_dict(seg)
    return out


def sections_of(cfg) -> dict[str, Any]:
    """A whole CrabConfig as config sections."""
    return {"llama": cfg.llama, "lora": cfg.lora, "clip": cfg.clip, "beats": cfg.beats,
            "visual_qformer": cfg.visual_qformer, "audio_qformer": cfg.audio_qformer, "seg": cfg.seg}


def components_of_sections(sections: Mapping[str, Any]) -> list[str]:
    have = {"llm": "llama", "visual_encoder": "clip", "audio_encoder": "beats", "vl_projector": "visual_qformer",
            "al_projector": "audio_qformer", "seg_module": "seg"}
    return [c for c in COMPONENTS if sections.get(have[c]) is not None]


# -- tables and expected shapes ------------------------------------------------------------------

def tables_for(sections: Mapping[str, Any], components: Sequence[str]) -> MappingTable:
    """The crab table restricted to ``components`` (full Crab torch names <-> crab_jax paths)."""
    ns = types.SimpleNamespace(
        llama=sections.get("llama") or LlamaConfig(), lora=sections.get("lora"),
        clip=sections.get("clip") or ClipEncoderConfig(), beats=sections.get("beats") or BeatsConfig(),
        seg=sections.get("seg"))
    tables = component_tables(ns)  # the family tables; unused sections only get defaults
    rules = []
    for name in components:
        torch_prefix, jax_prefix = COMPONENT_PREFIXES[name]
        rules.extend(tables[name].with_prefix(torch_prefix, jax_prefix).rules)
    return MappingTable("crab[" + ",".join(components) + "]", rules)


def _module_ctors(sections) -> dict[str, Callable]:
    from flax import nnx

    return {
        "llm": lambda: LlamaForCausalLM(sections["llama"], sections.get("lora"), rngs=nnx.Rngs(0)),
        "visual_encoder": lambda: ClipVisualEncoder(sections["clip"], rngs=nnx.Rngs(0)),
        "audio_encoder": lambda: Beats(sections["beats"], rngs=nnx.Rngs(0)),
        "vl_projector": lambda: VisualProjector(sections["visual_qformer"], rngs=nnx.Rngs(0)),
        "al_projector": lambda: AudioProjector(sections["audio_qformer"], rngs=nnx.Rngs(0)),
        "seg_module": lambda: SegModule(sections["seg"], rngs=nnx.Rngs(0)),
    }


def expected_variables(sections: Mapping[str, Any], components: Sequence[str]) -> dict[str, tuple]:
    """crab_jax path -> (shape, dtype, is_buffer) of the components, built without allocating."""
    out = {}
    for name in components:
        keys = tuple(s for s in COMPONENT_SECTIONS[name] if s in sections)
        out.update(_component_variables(name, tuple((s, sections[s]) for s in keys)))
    return out


@functools.lru_cache(maxsize=16)
def _component_variables(name: str, sections: tuple) -> dict[str, tuple]:
    """Cached: building a component abstractly takes seconds for the whole LLM."""
    from crab_jax.parallel.sharding import Buffer
    from crab_jax.models.state_dict import abstract_module, flat_variables

    module = abstract_module(_module_ctors(dict(sections))[name])
    return {f"{name}.{k}": (tuple(v.shape), np.dtype(v.dtype), isinstance(v, Buffer))
            for k, v in flat_variables(module).items()}


def add_generated_buffers(view: CrabView, sections, components, seed: int) -> None:
    """Generates the buffers that no user file carries (see the module docstring)."""
    if "seg_module" in components:
        seg = sections["seg"]
        half = seg.prompt_embed_dim // 2
        for i, jax_key in enumerate(SEG_BUFFERS):
            name = CRAB_PREFIX + jax_key
            if name not in view:
                def draw(i=i):
                    rng = np.random.default_rng([seed, i])
                    return (seg.pe_scale * rng.standard_normal((2, half))).astype(np.float32)
                view.generate(name, draw, f"drawn from N(0, {seg.pe_scale}^2) with --seed {seed} "
                                          "(the original redraws it at every build)")
    for comp, prefix, qcfg in (("vl_projector", "visual", "visual_qformer"), ("al_projector", "audio", "audio_qformer")):
        name = f"{CRAB_PREFIX}{comp}.{prefix}_Qformer.bert.embeddings.position_ids"
        if comp in components and name not in view:
            n = sections[qcfg].max_position_embeddings
            view.generate(name, lambda n=n: np.arange(n, dtype=np.int64)[None], f"arange({n}) (a fixed buffer)")
