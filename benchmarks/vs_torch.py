"""crab_jax vs the original PyTorch Crab on the CPU, same tiny model and batch, in one run (issue 16).

    CRAB_REPO=/path/to/Crab CRAB_TORCH_PYTHON=/path/to/venv/bin/python \\
        python -m benchmarks.vs_torch [--reps 15] [--kaldi .../torchaudio/compliance/kaldi.py]

The model is the crab_full fixture (``shared/fixtures/crab``): crab_jax converts its
``full_state_dict.safetensors`` (+ the LLaMA / CLIP / BEATs / BERT configs) with ``to-jax`` and
trains / decodes it through its own trainer step and generator; the original is built from the
same files in its own venv by ``benchmarks/vs_torch_original.py`` (a subprocess of this one, the
original imported from ``CRAB_REPO`` at run time, never copied). The batch is the fixture's three
samples (AVE, AVQA, S4 from ``shared/media``), each side decoding them with its own data code;
the token ids are checked equal to the fixture's, the losses printed side by side (eval mode)
before anything is timed.

Measures (each side fp32, ``--threads`` threads for torch; XLA:CPU uses the machine's cores):

* ``train_lm`` / ``train_avs``: one optimizer step (forward, backward, AdamW, grad clip 1.0) on
  the 3-sample batch, without / with the segmentation branch (LM loss / LM + mask loss); the
  trainable set is the original's fine-tuning one (projectors + every I-LoRA weight), plus the
  seg module on the AVS path. Both in training mode (dropout on, as each trainer runs).
* ``gen_1`` / ``gen_32``: greedy generation of 1 / 32 new tokens for the 3 prompts (EOS never
  stops it); time to first token = ``gen_1``, per-token = (``gen_32`` - ``gen_1``) / 31.
* ``prep_ave`` / ``prep_s4``: one AVE / S4 sample through each side's dataset code (decode
  10 frames + 10 fbank segments / image + 1 fbank + mask; crab_jax also tokenizes).

Repetitions interleave the two sides (one rep of A then one of B, the order swapped every
round), so machine load hits both alike; the table gives medians and the crab_jax / original
speed ratio (median over rounds of the paired ratios). Without ``CRAB_REPO`` it exits with a
one-line message saying what to set.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
ORIGINAL_SIDE = pathlib.Path(__file__).resolve().with_name("vs_torch_original.py")
MEASURES = ("train_lm", "train_avs", "gen_1", "gen_32", "prep_ave", "prep_s4")
NEW_TOKENS = 32
# Trainable sets, the same parameters on both sides: the original's fine-tuning set (Q-Former
# projectors + I-LoRA router, A, B heads), plus the seg module on the AVS path.
TRAINABLE_JAX = {"train_lm": (r"^vl_projector\.", r"^al_projector\.", r"\.lora_(A|B|route)$")}
TRAINABLE_JAX["train_avs"] = TRAINABLE_JAX["train_lm"] + (r"^seg_module\.",)
TRAINABLE_TORCH = {"train_lm": (r"\.vl_projector\.", r"\.al_projector\.", r"\.lora_(A|B\d+|route)\.")}
TRAINABLE_TORCH["train_avs"] = TRAINABLE_TORCH["train_lm"] + (r"\.seg_module\.",)
# crab_jax's run options (same outputs as 0, less work): the mask decoder on the segmentation
# sample only (1 of the 3; the loss equals decoding all three, which the original does), CLIP on
# the frames the prompts read (21 of the 30 slots: the S4 image fills 1 of its 10) and BEATs on
# the audio segments they read (21 of 30: the S4 sample has 1 second of audio).
SEG_CHUNK, FRAME_CHUNK, AUDIO_CHUNK = 1, 1, 1
# Targets of issue 16 (crab_jax / original speed).
TARGETS = {"train_lm": 3.0, "train_avs": 3.0, "ttft": 2.0, "gen_32": 5.0, "prep_ave": 2.0, "prep_s4": 2.0}
MISSING_REPO = ("benchmarks/vs_torch.py: set CRAB_REPO (or --crab-repo) to the original Crab's source tree "
                "(GeWu-Lab/Crab) and CRAB_TORCH_PYTHON (or --torch-python) to the python of its venv "
                "(see docs/benchmarks.md)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crab-repo", default=os.environ.get("CRAB_REPO", ""),
                   help="the original Crab's source tree (default $CRAB_REPO)")
    p.add_argument("--torch-python", default=os.environ.get("CRAB_TORCH_PYTHON", ""),
                   help="python of the original's venv (default $CRAB_TORCH_PYTHON)")
    p.add_argument("--kaldi", default=os.environ.get("CRAB_KALDI_PY", ""),
                   help="torchaudio/compliance/kaldi.py from the torchaudio wheel, loaded standalone when the "
                        "venv has no working torchaudio (default $CRAB_KALDI_PY)")
    p.add_argument("--fixtures", default=str(SHARED / "fixtures" / "crab"), help="default ../shared/fixtures/crab")
    p.add_argument("--media", default=str(SHARED / "media"), help="default ../shared/media")
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per measure and side (default 15)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", default="", help="also write the result here")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def check_original(args: argparse.Namespace) -> str | None:
    """The one-line reason the original cannot be run, or None."""
    if not args.crab_repo:
        return MISSING_REPO
    if not os.path.isfile(os.path.join(args.crab_repo, "models", "unified_llama.py")):
        return f"benchmarks/vs_torch.py: CRAB_REPO={args.crab_repo} is not the original Crab's source tree " \
               "(no models/unified_llama.py)"
    if not args.torch_python:
        return MISSING_REPO
    return None


# ------------------------------------------------------------------------------ original


class OriginalSide:
    """``vs_torch_original.py`` in the original's venv, one JSON line per request."""

    def __init__(self, args: argparse.Namespace):
        cmd = [args.torch_python, str(ORIGINAL_SIDE), "--crab-repo", args.crab_repo, "--fixtures", args.fixtures,
               "--media", args.media, "--threads", str(args.threads),
               "--trainable-lm", *TRAINABLE_TORCH["train_lm"], "--trainable-avs", *TRAINABLE_TORCH["train_avs"]]
        if args.kaldi:
            cmd += ["--kaldi", args.kaldi]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vs_torch_original_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the original's side exited (code {self.proc.poll()}); its log: {self.log.name}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the original's side: {reply['error']} (log: {self.log.name})")
        return reply

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        return self._read()

    def time(self, what: str) -> float:
        return self.ask(cmd="time", what=what, n=1)["seconds"][0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------ crab_jax


def fixture_records(config: dict) -> list[tuple]:
    """``(record, answer)`` of the fixture's samples: quick-start requests (the prompts the fixture
    rendered; AVQA's question read back out of its instruction) and the fixture's answers."""
    from crab_jax.data.records.quick_start import quick_start_record
    from crab_jax.families.crab import prompts as P

    out = []
    for i, (task, files, text) in enumerate(zip(config["batch_tasks"], config["media"], config["texts"])):
        request = {"task": task, **files}
        if task == "avqa":
            sentinel = "\x00"
            rendered = P.llama2_chat(P.crab_instruction(quick_start_record({**request, "question": sentinel})))
            head, tail = rendered.split(sentinel)
            request["question"] = re.fullmatch(re.escape(head) + "(.+)" + re.escape(tail), text["instruction"],
                                               flags=re.S).group(1)
        answer = text["output"][: -len("</s>")] if text["output"].endswith("</s>") else text["output"]
        out.append((quick_start_record(request, f"crab_full#{i}"), answer))
    return out


def training_example(builder, tokenizer, record, answer: str, index: int):
    """crab_jax's example of a quick-start request trained on ``answer``: its media decoded by the
    data code, its ids the prompt + target as crab_jax tokenizes them. (A quick-start record is a
    generation request, so the builder gives it no target; the fixture's batch is those prompts
    with targets, which no other record mode renders.)"""
    import numpy as np

    from crab_jax.families.crab import examples as E
    from crab_jax.families.crab.prompts import tokenize_record

    ex = builder.build(record, index)
    tok = tokenize_record(tokenizer, record, answer)
    return dataclasses.replace(ex, input_ids=tok.input_ids.astype(np.int32), labels=tok.labels.astype(np.int32),
                               is_seg=E.is_seg_record(record, builder.settings))


def convert_fixture(fixture: pathlib.Path, config: dict, out: pathlib.Path) -> None:
    """``to-jax`` of crab_full's full state dict (with its LLaMA / CLIP / BEATs / BERT files)."""
    from crab_jax.cli.convert_weights.cli import main

    argv = ["to-jax", "--out", out, "--llama", fixture / "llama_hf", "--clip", fixture / "clip_vision",
            "--beats", fixture / "beats_tiny.pt", "--crab", fixture / "full_state_dict.safetensors",
            "--bert-config", fixture / "bert_config",
            "--select-layers", ",".join(str(x) for x in config["select_layer_list"]),
            "--lora-alpha", config["lora"]["lora_alpha"], "--lora-dropout", config["lora"]["lora_dropout"]]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"to-jax of the fixture failed:\n{printed.getvalue()[-2000:]}")


def run_config(ckpt: pathlib.Path, config: dict, what: str):
    """The trainer's config for one train-step measure."""
    from crab_jax.config.schema import get_config

    c = get_config()
    c.model.preset, c.model.init_checkpoint = "checkpoint", str(ckpt)
    c.model.vocab_pad_multiple = 1  # the original's 317 rows
    c.model.seg_branch = what == "train_avs"
    c.model.seg_chunk, c.model.frame_chunk, c.model.audio_chunk = SEG_CHUNK, FRAME_CHUNK, AUDIO_CHUNK
    lora = config["lora"]
    c.model.lora.r, c.model.lora.alpha = int(lora["r"]), float(lora["lora_alpha"])
    c.model.lora.num_heads, c.model.lora.dropout = int(lora["lora_nums"]), float(lora["lora_dropout"])
    c.trainable = TRAINABLE_JAX[what]
    c.optim.lr, c.optim.schedule, c.optim.grad_clip = 1e-4, "constant", 1.0
    c.train.global_batch, c.train.num_steps = len(config["batch_tasks"]), 1_000_000
    c.data.tasks = tuple(config["batch_tasks"])
    c.data.frame_slots = c.data.audio_slots = 10
    return c


class JaxSide:
    """crab_jax on the same model and batch: the trainer's compiled step, the generator, the data code."""

    def __init__(self, args: argparse.Namespace, workdir: pathlib.Path, train_steps: bool = True):
        import jax
        import numpy as np

        from crab_jax.data.pipeline.buckets import Bucket
        from crab_jax.evaluation.converted_model import load_converted_model
        from crab_jax.families.crab.family import FAMILY
        from crab_jax.families.crab.prompts import load_tokenizer
        from crab_jax.training.setup import resolve

        self.jax, self.np = jax, np
        fixtures = pathlib.Path(args.fixtures)
        with open(fixtures / "manifest.json") as f:
            self.config = json.load(f)["fixtures"]["crab_full"]["config"]
        fixture = fixtures / "crab_full"
        self.ckpt = workdir / "crab"
        convert_fixture(fixture, self.config, self.ckpt)
        self.arrays = np.load(fixture / "crab_full.npz")
        model_cfg, self.model = load_converted_model(FAMILY, self.ckpt)
        # The generator gets the run options too (the checkpoint's config has the defaults).
        self.model_cfg = dataclasses.replace(model_cfg, seg_chunk=SEG_CHUNK, frame_chunk=FRAME_CHUNK,
                                             audio_chunk=AUDIO_CHUNK)
        self.model.cfg = self.model_cfg
        self.model.eval()
        tokenizer = load_tokenizer(fixture / "tokenizer_mm")
        run, _ = resolve(run_config(self.ckpt, self.config, "train_lm"))
        self.builder = FAMILY.example_builder(self.model_cfg, run.data, args.media, tokenizer)
        pairs = fixture_records(self.config)
        self.records = [r for r, _ in pairs]
        examples = [training_example(self.builder, tokenizer, r, a, i) for i, (r, a) in enumerate(pairs)]
        self.batch = self.builder.collate(examples, self._bucket(examples, Bucket))
        prompt_examples = [self.builder.build(r, i) for i, r in enumerate(self.records)]
        self.prompt_batch = self.builder.collate(prompt_examples, self._bucket(prompt_examples, Bucket))
        self.token_ids_equal = all(np.array_equal(ex.input_ids, self.arrays[f"s{i}_input_ids"].reshape(-1))
                                   for i, ex in enumerate(examples))
        self.steps = {what: self._train_step(what) for what in ("train_lm", "train_avs")} if train_steps else {}
        self.generators = {}

    def _bucket(self, examples, bucket_cls):
        infos = [self.builder.example_plan_info(ex) for ex in examples]
        return bucket_cls(max(i.expanded_len for i in infos), max(i.fbank_frames for i in infos))

    def _train_step(self, what: str) -> dict:
        """The trainer's state (weights from the converted fixture) and compiled step for ``what``."""
        from crab_jax.parallel.mesh import to_global
        from crab_jax.training.setup import build_setup, initial_state, resolve
        from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step

        np = self.np
        config = run_config(self.ckpt, self.config, what)
        run, family = resolve(config)
        # The model config from the run's (checkpoint preset + run options, as the trainer builds it).
        setup, _, _ = build_setup(config, model_cfg=family.model_config(run.model, None), steps=1_000_000)
        state = initial_state(config, setup)
        shapes = {k: np.shape(v) for k, v in self.batch.items()}
        batch = to_global(self.batch, batch_shardings(shapes, setup.mesh))
        with_seg = bool(run.model.seg_branch)
        step = make_train_step(setup, micro_batches=1, with_seg=with_seg, num_tasks=len(run.data.tasks),
                               router_groups=int(run.metrics.router_layer_groups))
        compiled = jit_train_step(setup, step, shapes).lower(state, batch).compile()
        trainable = sum(int(np.prod(x.shape)) for x in self.jax.tree.leaves(state.params))
        return dict(setup=setup, state=state, batch=batch, fn=compiled, with_seg=with_seg, family=family,
                    trainable=trainable)

    def losses(self) -> dict:
        """Eval-mode losses of the LM and AVS paths (dropout off), before any step."""
        out = {}
        for what, s in self.steps.items():
            setup, state, family = s["setup"], s["state"], s["family"]

            def loss(params, frozen, rng_vars, batch, with_seg=s["with_seg"]):
                model = setup.merge(params, frozen, rng_vars)
                model.eval()
                res = family.forward_loss(model, batch, with_seg)
                return res.loss, res.terms

            total, terms = self.jax.jit(loss)(state.params, state.frozen, state.rng_vars, s["batch"])
            if what == "train_lm":
                out["lm_loss"] = float(total)
            else:
                out["avs_total_loss"] = float(total)
                out["mask_loss"] = float(terms["mask_loss"])
        out["trainable_params"] = {w: s["trainable"] for w, s in self.steps.items()}
        return out

    def _generate(self, n: int):
        from crab_jax.families.crab.decoding import jit_generate
        from crab_jax.models.decoding import DecodeConfig

        # EOS id -1: never stops early, every row makes all n tokens (as min_new_tokens on the original).
        dcfg = DecodeConfig(max_new_tokens=n, eos_token_id=-1, pad_token_id=int(self.model_cfg.pad_token_id),
                            with_masks=False)
        return self.jax.block_until_ready(jit_generate(self.model, self.prompt_batch, dcfg).tokens)

    def run(self, what: str) -> float:
        t0 = time.perf_counter()
        if what in self.steps:
            s = self.steps[what]
            s["state"], aux = s["fn"](s["state"], s["batch"])
            self.jax.block_until_ready(aux)
        elif what == "gen_1":
            self._generate(1)
        elif what == "gen_32":
            self._generate(NEW_TOKENS)
        elif what == "prep_ave":
            self.builder.build(self.records[0], 0)
        elif what == "prep_s4":
            self.builder.build(self.records[2], 2)
        else:
            raise ValueError(f"unknown measure {what!r}; known {MEASURES}")
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------ timing + table


def interleaved(jax_side, original, reps: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per rep of every measure on both sides, after one warm-up each; within a round
    the two sides alternate which goes first."""
    times = {m: {"crab_jax": [], "original": []} for m in MEASURES}
    sides = {"crab_jax": jax_side.run, "original": original.time}
    for m in MEASURES:  # warm-up: compiles, first-call costs, codec start
        for run in sides.values():
            run(m)
    for r in range(reps):
        for k, m in enumerate(MEASURES):
            order = list(sides) if (r + k) % 2 == 0 else list(sides)[::-1]
            for name in order:
                times[m][name].append(sides[name](m))
        print(f"round {r + 1}/{reps} done", file=sys.stderr)
    return times


def summarize(times: dict, batch: int) -> list[dict]:
    """Rows of the table: per side the median and the best rep, the crab_jax / original speed as the
    median of the paired (same-round) ratios, and the ratio of the bests (on a loaded machine the
    best rep is the closest to an idle one). Train steps are given as samples/s, the rest in ms."""
    def row(name, unit, orig, ours, target_key, rate=None):
        speed = statistics.median(o / j for o, j in zip(orig, ours))
        med = {"original": statistics.median(orig), "crab_jax": statistics.median(ours)}
        best = {"original": min(orig), "crab_jax": min(ours)}
        best_speed = best["original"] / best["crab_jax"]
        shown = lambda x: rate / x if rate is not None else x
        target = TARGETS.get(target_key)
        return dict(measure=name, unit=unit, original=shown(med["original"]), crab_jax=shown(med["crab_jax"]),
                    best_original=shown(best["original"]), best_crab_jax=shown(best["crab_jax"]), speed=speed,
                    best_speed=best_speed, target=target, met=None if target is None else speed >= target)

    t = times
    ms = lambda xs: [1e3 * x for x in xs]
    rows = [
        row("train step, LM path", "samples/s", t["train_lm"]["original"], t["train_lm"]["crab_jax"], "train_lm",
            rate=batch),
        row("train step, AVS path (LM + mask loss)", "samples/s", t["train_avs"]["original"],
            t["train_avs"]["crab_jax"], "train_avs", rate=batch),
        row("time to first token (batch of 3)", "ms", ms(t["gen_1"]["original"]), ms(t["gen_1"]["crab_jax"]), "ttft"),
    ]
    # Per token: (32 tokens - 1 token) / 31 of the same round; its "best" from the two best reps.
    per_token = {s: [(g32 - g1) / (NEW_TOKENS - 1) for g32, g1 in zip(t["gen_32"][s], t["gen_1"][s])]
                 for s in ("original", "crab_jax")}
    tok = row("decoding, per token (batch of 3)", "ms", ms(per_token["original"]), ms(per_token["crab_jax"]),
              "per_token")
    if tok["crab_jax"] <= 0:  # crab_jax's 31 extra tokens cost less than the rounds' noise: no ratio
        tok["speed"] = float("nan")
    for s in ("original", "crab_jax"):
        tok["best_" + s] = 1e3 * (min(t["gen_32"][s]) - min(t["gen_1"][s])) / (NEW_TOKENS - 1)
    tok["best_speed"] = tok["best_original"] / tok["best_crab_jax"] if tok["best_crab_jax"] > 0 else float("nan")
    rows += [
        tok,
        row(f"{NEW_TOKENS}-token generation, end to end", "ms", ms(t["gen_32"]["original"]),
            ms(t["gen_32"]["crab_jax"]), "gen_32"),
        row("preprocessing, one AVE sample", "ms", ms(t["prep_ave"]["original"]), ms(t["prep_ave"]["crab_jax"]),
            "prep_ave"),
        row("preprocessing, one S4 sample", "ms", ms(t["prep_s4"]["original"]), ms(t["prep_s4"]["crab_jax"]),
            "prep_s4"),
    ]
    return rows


def _ratio(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}x"


def print_table(rows: list[dict]) -> None:
    print("| measure | original median | crab_jax median | speed (paired median) | original best | "
          "crab_jax best | speed (bests) | target | met (paired median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        target = "-" if r["target"] is None else f">= {r['target']:g}x"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        u = r["unit"]
        print(f"| {r['measure']} | {r['original']:.2f} {u} | {r['crab_jax']:.2f} {u} | {_ratio(r['speed'])} | "
              f"{r['best_original']:.2f} {u} | {r['best_crab_jax']:.2f} {u} | {_ratio(r['best_speed'])} | {target} | {met} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = check_original(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    original = OriginalSide(args)
    try:
        with tempfile.TemporaryDirectory(prefix="vs_torch_") as tmp:
            ours = JaxSide(args, pathlib.Path(tmp))
            theirs = original.ask(cmd="losses")
            mine = ours.losses()
            print(f"token ids equal to the fixture's (crab_jax data code): {ours.token_ids_equal}")
            print(f"original: {theirs['tasks']} lengths {theirs['seq_lens']} (before media expansion)")
            for k in ("lm_loss", "avs_total_loss", "mask_loss"):
                print(f"{k}: original {theirs[k]:.7f}  crab_jax {mine[k]:.7f}  |diff| {abs(theirs[k] - mine[k]):.2e}")
            print(f"trainable parameters: original {theirs['trainable_params']}  crab_jax {mine['trainable_params']}")
            times = interleaved(ours, original, args.reps)
            from crab_jax.models.decoding import TRACES

            print(f"crab_jax generator traces per (prompt shape, new tokens): {dict(TRACES)}")  # 1 each: no retrace
        rows = summarize(times, batch=int(theirs["samples"]))
        load_after = os.getloadavg()
        print(f"\nmedians of {args.reps} interleaved reps; 1/5/15-min load average at start "
              f"{'/'.join(f'{x:.2f}' for x in load_before)}, at the end {'/'.join(f'{x:.2f}' for x in load_after)} "
              f"({os.cpu_count()} CPUs)")
        print_table(rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"losses": {"original": theirs, "crab_jax": mine}, "rows": rows, "times_s": times,
                           "load_average": {"start": load_before, "end": load_after}}, f, indent=1)
    finally:
        original.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
