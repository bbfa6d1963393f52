"""The original PyTorch Crab's side of ``benchmarks/vs_torch.py`` (run by it, in the original's venv).

Imports the original from ``--crab-repo`` at run time (nothing of it is copied here) and builds
it the way the crab_full fixture was built (``shared/fixtures/crab/README.md`` section 5 and the
manifest's ``patches_applied``): LLaMA folder -> ``UnifiedForCausalLM`` -> I-LoRA
(``peft_hyper``) -> Crab's 17 tokens -> encoders, projectors and seg module at the tiny widths,
then every weight and buffer from ``full_state_dict.safetensors``. The batch is the fixture's
(AVE + AVQA + S4 from ``shared/media``) through the original's own dataset code
(``dataset/quick_start_dataset.UnifiedTestDataset.__getitem__``) and training collator.

Protocol: one JSON object per line. The driver writes ``{"cmd": ...}`` to stdin; this side
answers one line on the protocol stream (the process's original stdout; everything the
original prints goes to stderr). Commands: ``losses``; ``time`` with ``what`` (one of
:data:`MEASURES`) and ``n`` -> ``{"seconds": [...]}``; ``quit``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
import types

MEASURES = ("train_lm", "train_avs", "gen_1", "gen_32", "prep_ave", "prep_s4")


def protocol_stream():
    """The original stdout for answers; fd 1 and ``sys.stdout`` now go to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def install_kaldi(kaldi_py: str) -> None:
    """``torchaudio.compliance.kaldi`` from the wheel's ``kaldi.py`` alone (torchaudio's C
    extension does not load against this torch; the fbank needs only torch)."""
    pkg = types.ModuleType("torchaudio")
    pkg.__path__ = []
    compliance = types.ModuleType("torchaudio.compliance")
    compliance.__path__ = []
    sys.modules["torchaudio"], sys.modules["torchaudio.compliance"] = pkg, compliance
    spec = importlib.util.spec_from_file_location("torchaudio.compliance.kaldi", kaldi_py)
    kaldi = importlib.util.module_from_spec(spec)
    sys.modules["torchaudio.compliance.kaldi"] = kaldi
    spec.loader.exec_module(kaldi)
    pkg.compliance, compliance.kaldi = compliance, kaldi


def stub_video_llama2() -> None:
    """``models.unified_arch`` imports a projector the released code lacks (used only when its
    module switch is 'video_llama2'; it is 'unified')."""
    for name in ("models.video_llama2", "models.video_llama2.projector"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules["models.video_llama2.projector"].STCConnectorV35 = object


class _TorchProxy:
    """A module-level ``torch`` stand-in that changes one hard-coded size and forwards the rest."""

    def __init__(self, torch, **overrides):
        self._torch, self._overrides = torch, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._torch, name)


def patch_sizes(torch, *, prompt_embed_dim: int, vision_width: int, audio_width: int, bert_dir: str) -> None:
    """The manifest's ``patches_applied``: the 256-channel mask repeat, the CLIP-L / BEATs widths
    and the BERT config path the original hard-codes."""
    import models.multimodal_encoder as enc
    import models.unified_arch as arch

    def repeat_interleave(x, repeats, *args, **kwargs):
        if repeats == 256 and kwargs.get("dim", args[0] if args else None) == 1:
            repeats = prompt_embed_dim
        return torch.repeat_interleave(x, repeats, *args, **kwargs)

    def zeros(*size, **kwargs):
        shape = list(size[0]) if len(size) == 1 and isinstance(size[0], (list, tuple)) else list(size)
        if shape == [256, 1024]:
            shape = [256, vision_width]
        return torch.zeros(shape, **kwargs)

    enc.torch = _TorchProxy(torch, repeat_interleave=repeat_interleave)
    arch.torch = _TorchProxy(torch, zeros=zeros)
    vl, al = arch.VLProjector, arch.ALProjector
    arch.VLProjector = lambda **kw: vl(**{**kw, "hidden_size": vision_width, "bert_ckpt_path": bert_dir})
    arch.ALProjector = lambda **kw: al(**{**kw, "hidden_size": audio_width, "bert_ckpt_path": bert_dir})


def build_model(torch, fixture: str, config: dict):
    """The original's model with the fixture's weights, eval mode (every dropout off)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from models.unified_llama import UnifiedForCausalLM
    from peft_hyper import LoraConfig, get_peft_model

    llama_dir = os.path.join(fixture, "llama_hf")
    llama_config = LlamaConfig.from_pretrained(llama_dir, local_files_only=True)
    llama_config._attn_implementation = config.get("attn_implementation", "sdpa")
    model = UnifiedForCausalLM.from_pretrained(llama_dir, config=llama_config, torch_dtype=torch.float32)
    lora = config["lora"]
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", target_modules=list(lora["target_modules"]),
                                             inference_mode=False, r=lora["r"], lora_alpha=lora["lora_alpha"],
                                             lora_dropout=lora["lora_dropout"], lora_nums=lora["lora_nums"]))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(fixture, "tokenizer"), padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    seg = config["seg"]
    model.get_model().pad_token_id = tokenizer.pad_token_id
    model.initialize_MM_tokenizer(tokenizer, mask_token_nums=seg["image_scale_nums"] * seg["token_nums_per_scale"])
    d_model = config["llama_config"]["hidden_size"]
    model.get_model().init_multimodal_modules(
        visual_branch=True, audio_branch=True, segment_branch=True, d_model=d_model,
        vit_ckpt_path=os.path.join(fixture, "clip_vision"), select_layer_list=list(config["select_layer_list"]),
        select_feature=config["select_feature"], image_size=224, patch_size=14,
        visual_query_token_nums=config["visual_query_token_nums"], audio_query_token_nums=config["audio_query_token_nums"],
        BEATs_ckpt_path=os.path.join(fixture, "beats_tiny.pt"), prompt_embed_dim=seg["prompt_embed_dim"],
        mask_decoder_transformer_depth=seg["depth"], low_res_mask_size=seg["low_res_mask_size"],
        avs_query_num=seg["avs_query_num"], num_classes=1, query_generator_num_layers=seg["qg_layers"],
        vit_image_embedding_dim=seg["vit_image_embedding_dim"])
    state = load_file(os.path.join(fixture, "full_state_dict.safetensors"))
    result = model.load_state_dict(state, strict=False)
    own = set(model.state_dict())
    missing = [k for k in result.missing_keys if k in own]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"fixture state dict does not fit the original's model: missing {missing[:5]} "
                           f"({len(missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})")
    model.eval()
    return model, tokenizer


def make_dataset(config: dict, media: str, image_processor):
    """The original's test dataset object over the fixture's three samples (texts already
    chat-templated, as the manifest stores them: its tokenizer is not asked to template)."""
    from dataset.quick_start_dataset import UnifiedTestDataset

    ds = UnifiedTestDataset.__new__(UnifiedTestDataset)
    ds.video_processor, ds.tokenizer, ds.image_size, ds.video_frame_nums = image_processor, None, 224, 10
    samples = []
    for task, files, text in zip(config["batch_tasks"], config["media"], config["texts"]):
        s = {"task_name": task, "instruction": text["instruction"], "output": text["output"]}
        for k, v in files.items():
            s[k] = os.path.join(media, v)
        if "image_path" in s:
            s["idx"] = int(os.path.splitext(os.path.basename(s["image_path"]))[0])
        samples.append(s)
    ds.samples = samples
    return ds


class Original:
    def __init__(self, args):
        import numpy as np
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        np.random.seed(0)
        self.torch = torch
        with open(os.path.join(args.fixtures, "manifest.json")) as f:
            config = json.load(f)["fixtures"]["crab_full"]["config"]
        fixture = os.path.join(args.fixtures, "crab_full")
        sys.path.insert(0, args.crab_repo)
        importlib.import_module("transformers")  # before the stand-in torchaudio: it probes the real one once

        if args.kaldi:
            install_kaldi(args.kaldi)
        stub_video_llama2()
        patch_sizes(torch, prompt_embed_dim=config["seg"]["prompt_embed_dim"],
                    vision_width=config["clip_vision_config"]["hidden_size"],
                    audio_width=config["beats_cfg"]["encoder_embed_dim"], bert_dir=os.path.join(fixture, "bert_config"))
        from dataset.unified_dataset import DataCollatorForUnifiedDataset

        self.model, self.tokenizer = build_model(torch, fixture, config)
        self.base = self.model.get_model()  # UnifiedModel (embeddings, encoders, seg module)
        self.lm = self.model.base_model.model  # UnifiedForCausalLM (is_avs_task switch)
        self.dataset = make_dataset(config, args.media, self.base.visual_encoder.image_processor)
        self.collate = DataCollatorForUnifiedDataset(tokenizer=self.tokenizer)
        items = [self.dataset[i] for i in range(len(self.dataset.samples))]
        self.batch = self.collate(items)
        prompts = [dict(it, output="") for it in items]
        self.prompt_batch = self.collate(prompts)  # labels all -100 (generate takes them, unused)
        self.optimizers = {}
        self.trainable = {"train_lm": args.trainable_lm, "train_avs": args.trainable_avs}

    # ------------------------------------------------------------------ training
    def _set_trainable(self, what: str):
        patterns = [re.compile(p) for p in self.trainable[what]]
        params = []
        for name, p in self.model.named_parameters():
            on = any(rx.search(name) for rx in patterns)
            p.requires_grad_(on)
            if on:
                params.append(p)
        if what not in self.optimizers:
            self.optimizers[what] = (self.torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0), params)
        return self.optimizers[what]

    def _forward(self, what: str):
        self.lm.is_avs_task = what == "train_avs"
        return self.model(**self.batch)

    def losses(self) -> dict:
        """Eval-mode losses (every dropout off) of the LM and AVS paths, before any step."""
        self.model.eval()
        with self.torch.no_grad():
            lm = float(self._forward("train_lm").loss)
            total = float(self._forward("train_avs").loss)
        self.lm.is_avs_task = False
        n_params = {w: sum(p.numel() for n, p in self.model.named_parameters()
                           if any(re.search(r, n) for r in self.trainable[w])) for w in self.trainable}
        return {"lm_loss": lm, "avs_total_loss": total, "mask_loss": total - lm, "trainable_params": n_params,
                "samples": len(self.batch["batch_task_names"]), "tasks": self.batch["batch_task_names"],
                "seq_lens": [int(x.shape[0]) for x in self.batch["batch_input_ids"]]}

    def train_step(self, what: str) -> None:
        """One step as the HF Trainer runs it: training mode (dropout on), clip to norm 1, AdamW."""
        opt, params = self._set_trainable(what)
        self.model.train()
        loss = self._forward(what).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.lm.is_avs_task = False
        self.model.eval()

    # ---------------------------------------------------------------- generation
    def generate(self, n: int):
        with self.torch.no_grad():
            return self.model.generate(**self.prompt_batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       use_cache=True)

    def run(self, what: str) -> float:
        t0 = time.perf_counter()
        if what in ("train_lm", "train_avs"):
            self.train_step(what)
        elif what == "gen_1":
            self.generate(1)
        elif what == "gen_32":
            self.generate(32)
        elif what == "prep_ave":
            self.dataset[0]
        elif what == "prep_s4":
            self.dataset[2]
        else:
            raise ValueError(f"unknown measure {what!r}; known {MEASURES}")
        return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crab-repo", required=True)
    p.add_argument("--fixtures", required=True, help="shared/fixtures/crab")
    p.add_argument("--media", required=True, help="shared/media")
    p.add_argument("--kaldi", default="", help="torchaudio/compliance/kaldi.py from the torchaudio wheel, loaded "
                   "standalone (torchaudio's C extension has no build for every torch); default: import torchaudio")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trainable-lm", nargs="+", required=True, help="regexes over the original's parameter names")
    p.add_argument("--trainable-avs", nargs="+", required=True)
    args = p.parse_args(argv)
    out = protocol_stream()
    try:
        side = Original(args)
    except Exception as e:  # the driver shows this line and stops
        import traceback

        traceback.print_exc()
        out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return 1
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "losses":
            reply = side.losses()
        elif msg["cmd"] == "time":
            reply = {"seconds": [side.run(msg["what"]) for _ in range(int(msg.get("n", 1)))]}
        else:
            reply = {"error": f"unknown command {msg['cmd']!r}"}
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
