"""Every configuration key of ``python -m crab_jax.train``, with its default and meaning.

The one schema: config files (``configs/*.py``) call :func:`get_config` and change values;
the returned ConfigDict is locked, so adding a key that is not declared here (in a file or
as ``--config.x.y=v``) raises at once, naming the key. Per-family recipes (the original's
training stages) live with their family (``crab_jax.families.crab.recipes``).
"""

from __future__ import annotations

import ml_collections

from crab_jax.models.ilora import DEFAULT_TARGETS

# Logical axis -> mesh axes (first match wins; a mesh axis is used once per tensor).
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("lora_rank", None),
    ("lora_heads", None),
    ("conv", None),
    ("channels", None),
    ("queries", None),
    ("norm", None),
    ("positions", None),
    # Activations (parallel.sharding.constrain): samples over the batch axes, hidden states
    # replicated over ``tensor`` between layers (Megatron style), head / MLP / vocabulary dims split.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

# Keys a resumed run may change without changing the computation or the train state's structure:
# length of the run (the learning-rate schedule's length follows num_steps / epochs), evaluation,
# logging and checkpoint cadence, the mesh (checkpoints restore onto any mesh), rematerialisation,
# decoding parallelism, the cache folder and how processes connect. A key here names itself or a
# whole section ("eval"). Every other key is compared with the checkpoint's config on resume
# (crab_jax.training.resume), and a difference stops the run unless train.allow_config_change.
RESUME_SAFE_KEYS = (
    "stage",
    "train.epochs", "train.num_steps", "train.stop_after_steps", "train.allow_config_change",
    "train.compilation_cache",
    "eval",
    "checkpoint",
    "metrics",
    "distributed",
    "mesh",
    "model.remat", "model.attention", "model.seg_chunk", "model.frame_chunk", "model.audio_chunk",
    "data.cache_dir", "data.read_threads", "data.prefetch", "data.max_bad_fraction",
)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                      # model init + dropout streams + random data
    c.stage = "custom"              # name only (logging); apply_stage() fills the values

    c.model = ml_collections.ConfigDict()
    c.model.family = "crab"         # the model family (crab_jax.families): model, data, decoding, converters
    c.model.preset = "tiny"         # tiny | crab_7b (paper sizes) | checkpoint (crab_config.json of init_checkpoint)
    c.model.init_checkpoint = ""    # converted dir: <dir>/params (Orbax) + <dir>/crab_config.json
    # Workdirs of earlier stages (e.g. pretrain_visual, pretrain_audio for finetune): their latest
    # saved weights are read over init_checkpoint's, wherever they belong in this run.
    c.model.init_from_runs = ()
    c.model.dtype = "float32"       # compute dtype of the LLM and encoders (seg module + losses stay fp32)
    c.model.param_dtype = "float32"          # storage dtype of TRAINABLE weights (optimizer works in it)
    c.model.frozen_param_dtype = "float32"   # storage dtype of frozen weights (bfloat16 halves memory)
    c.model.scan_layers = False
    c.model.remat = "none"          # none | full | dots (per decoder layer)
    # The LLM's attention: auto (fused on GPU / TPU, reference on CPU) | reference (the einsum path the
    # parity tests pin, fp32 [b, heads, S, S] scores) | fused (jax.nn.dot_product_attention).
    c.model.attention = "auto"
    c.model.vocab_pad_multiple = 128  # 32017 rows -> 32128: divisible by any mesh axis size up to 128
    c.model.base_vocab = -1         # text ids before Crab's 17 tokens; -1: the tokenizer's (else the preset's)
    c.model.seg_branch = True       # run the mask decoder and add the mask loss
    # Mask decoder in the train step: 0 = on every sample (the original); k > 0 = only on the
    # segmentation samples, k per call, chunks without one skipped (same loss, less work).
    c.model.seg_chunk = 0
    # CLIP on the frame slots: 0 = every slot (the original's padded frames too); k > 0 = only the
    # slots a media token or a mask reads, k per call, chunks without one skipped (same outputs).
    c.model.frame_chunk = 0
    # BEATs on the audio slots, the same: 0 = every slot; k > 0 = only the slots a media token reads.
    c.model.audio_chunk = 0
    c.model.avs_query_num = -1      # -1 keeps the preset's value
    c.model.low_res_mask_size = -1  # -1 keeps the preset's value
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.r = 4
    c.model.lora.alpha = 8.0
    c.model.lora.num_heads = 3
    c.model.lora.dropout = 0.0
    c.model.lora.targets = DEFAULT_TARGETS

    c.trainable = (r"\.lora_(A|B|route)$",)   # regexes over dotted parameter paths (re.search)

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    # warmup_decay_log: DeepSpeed WarmupDecayLR as the original ran it (log warmup, linear decay to 0);
    # cosine: HF linear warmup + cosine to 0 (the CLI flag the original's scheduler overrode); constant.
    c.optim.schedule = "warmup_decay_log"
    c.optim.warmup_ratio = 0.03
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0         # global-norm clipping (HF max_grad_norm); <= 0 disables

    c.train = ml_collections.ConfigDict()
    c.train.global_batch = 8        # samples per optimizer step, over all devices and micro-batches
    c.train.micro_batches = 1       # gradient accumulation steps per optimizer step
    c.train.epochs = 1
    c.train.num_steps = -1          # > 0 overrides epochs * ceil(data.num_examples / global_batch)
    c.train.stop_after_steps = -1   # > 0: leave (with a checkpoint) after this many steps of THIS run
    # Resume even though keys outside RESUME_SAFE_KEYS differ from the checkpoint's config (each
    # difference is logged as a warning); the state's structure must still match.
    c.train.allow_config_change = False
    # JAX's persistent compilation cache (the commands turn it on): "" = <data.cache_dir or
    # ~/.cache/crab_jax>/jax_cache, a path, or "none" (off). A rerun / resume loads its compiled steps.
    c.train.compilation_cache = ""

    c.data = ml_collections.ConfigDict()
    # random: well-formed random batches (tests); synthetic: the built-in synthetic AV dataset,
    # generated on first use; avuie (alias grain): AV-UIE records under data.path.
    c.data.source = "random"
    c.data.path = ""                # dataset root. synthetic: where it is generated ("" = <cache_dir>/synthetic/<params>)
    c.data.prepared = ""            # avuie: ArrayRecord folder of crab_jax.data.prepared.prepare (read instead of data.path)
    c.data.tokenizer = ""           # tokenizer folder (LLaMA-2's for avuie); synthetic: "" builds a word tokenizer
    c.data.cache_dir = ""           # plan indices, default synthetic datasets + tokenizers; "" = ~/.cache/crab_jax
    c.data.tasks = ("ave", "avqa", "s4", "avss")  # task_id i in a batch is tasks[i] (per-task metrics)
    c.data.seq_len = 128            # random: the token length; records: the bucket when data.buckets is empty
    c.data.buckets = ()             # records: token-length buckets, one compiled step each; () = (seq_len,)
    c.data.frame_slots = 0          # frames per sample in the media buffer; 0 = the most data.tasks' prompts show
    c.data.audio_slots = 0          # audio segments per sample; 0 = the most data.tasks' prompts use (AV-UIE: 10)
    c.data.fbank_frames = 96        # random: fbank frames per segment; records: used only for audio-free data
    c.data.num_examples = 64        # random: dataset size (steps per epoch = ceil(num_examples / global_batch))
    c.data.num_distinct = 0         # random: > 0 cycles this many fixed batches
    c.data.worker_count = 0         # records: Grain decoding processes (0: threads of this process)
    c.data.read_threads = 0         # records: decoding threads (0: 4 without workers, 1 per worker)
    c.data.prefetch = 0             # records: batches decoded ahead (0: 8 without workers, 2 per worker)
    c.data.seed = 0                 # records: shuffle seed of the epoch plans
    c.data.shuffle = True           # records: shuffle every epoch
    # records: stop when more than this fraction of the records is unusable: judged against the whole
    # plan index at start-up, while decoding by the count / confidence-bound rule of
    # crab_jax.data.pipeline.bad_records.BadRecordLimit (a dataset under the limit never stops early).
    c.data.max_bad_fraction = 0.01
    # records: an annotation file that cannot be read (missing, truncated / invalid JSON or CSV) fails the
    # run at start-up naming the file and position; True trains without it (each skipped file is logged
    # and listed in the end-of-run summary).
    c.data.skip_bad_files = False
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.seed = 0          # generator seed: sample i depends on (seed, task, split, i) only
    c.data.synthetic.num_train = 128   # training records per task (AVQA: questions)
    c.data.synthetic.num_test = 32     # held-out records per task (S4: clips; frame 0 is evaluated)
    # records, training: sequence packing (crab_jax.data.pipeline.buckets). seq_len > 0 packs the samples the
    # family can pack (Crab: those without a mask to train) several to a row of seq_len tokens, attention kept
    # within each sample; they form one more bucket (the others keep data.buckets). Held-out evaluation is unpacked.
    c.data.packing = ml_collections.ConfigDict()
    c.data.packing.seq_len = 0         # tokens per packed row; 0 = no packing
    c.data.packing.samples = 8         # most samples per packed row
    c.data.packing.frame_slots = 0     # frames a packed row's media buffer holds; 0 = sized from the records
    c.data.packing.audio_slots = 0     # audio segments a packed row holds; 0 = sized from the records

    c.eval = ml_collections.ConfigDict()
    # Held-out evaluation (generation + task metrics vs chance, crab_jax.evaluation.generation.evaluate) on the
    # test split of synthetic / avuie data; the random source has no held-out split.
    c.eval.every_steps = 0          # > 0: also evaluate every this many steps
    c.eval.at_end = True            # evaluate when training finishes
    c.eval.batch_size = 0           # samples per generation batch; 0 = train.global_batch
    c.eval.max_batches = 0          # 0: the whole held-out split
    c.eval.max_new_tokens = 0       # generated tokens per sample; 0 = the family's largest over data.tasks (Crab: 500 text, 100 AVS)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1                 # -1: all devices not used by the other axes
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.mesh.rules = DEFAULT_RULES

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    # A latest committed step that cannot be read (array file missing / truncated, no _METADATA):
    # True: warn, move it to <workdir>/corrupt_checkpoints/ (kept, never deleted) and resume from
    # the previous committed step; False: stop with the same one-line message.
    c.checkpoint.fallback_on_corrupt = True

    c.metrics = ml_collections.ConfigDict()
    c.metrics.log_every = 1
    c.metrics.tensorboard = True
    c.metrics.router_layer_groups = 2   # router usage reported per contiguous group of decoder layers
    c.metrics.peak_flops_per_device = 0.0  # 0: look up the device kind (unknown kinds report no MFU)
    c.metrics.progress_bar = True
    # At each held-out evaluation, TensorBoard images of the LLM's I-LoRA routing on a few held-out
    # batches (mean gate per task x head, per layer, clustered task x task similarity;
    # crab_jax.evaluation.route_figures), when the model has I-LoRA with more than one head.
    c.metrics.route_figures = True

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = "auto"   # auto (TPU / env vars present) | always | never
    c.distributed.coordinator_address = ""  # host:port; "" reads JAX_COORDINATOR_ADDRESS
    c.distributed.num_processes = -1        # -1 reads JAX_NUM_PROCESSES
    c.distributed.process_id = -1           # -1 reads JAX_PROCESS_ID

    c.lock()
    return c
