"""crab_jax: JAX/Flax NNX reimplementation of Crab (CVPR'25) and Crab+."""

from setuptools import find_packages, setup

# Exact pins: the parity tests are the contract, and numerics move with these versions.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "transformers==4.57.6",
    "librosa==0.11.0",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "chex==0.1.92",
    "ml-collections==1.1.0",
    "safetensors==0.8.0",
    "av==18.1.0",
    "pillow==13.0.0",
    "soundfile==0.14.0",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    # figures (router heat maps, the transfer study), headless (Agg)
    "matplotlib==3.11.2",
    "absl-py==2.5.1",
    "numpy>=1.26,<3",
]

# Caption metrics (crab_jax.evaluation.metrics.captions; Java on the machine for PTB / METEOR).
EVAL_REQUIRES = ["pycocoevalcap==1.2"]

TEST_REQUIRES = EVAL_REQUIRES + [
    "pytest==9.0.3",
    # the suite on 2 workers (README / .ci/run: -n 2 --dist loadfile: a file's tests and its
    # module fixtures stay on one worker); 1.47x faster than serial on 2 cores
    "pytest-xdist==3.8.0",
    # CPU build, present on the machine; any other spec pulls CUDA wheels.
    "torch==2.13.0",
]

setup(
    name="crab_jax",
    version="0.1.0",
    description="Crab / Crab+ audio-visual LLMs in JAX / Flax NNX",
    python_requires=">=3.11",
    packages=find_packages(include=["crab_jax", "crab_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        "eval": EVAL_REQUIRES,
        # reading / writing torch .bin / .pt checkpoints (safetensors needs no torch)
        "convert": ["torch==2.13.0"],
        # the TPU runtime / compiler (also what `crab_jax.training.aot` needs on a CPU host)
        # gs:// workdirs: epath (Orbax metadata, JSONL) needs gcsfs, which pins fsspec to its own release
        # (so no exact pin here: gcsfs 2026.9.0 was never released, and pip picks the pair);
        # tensorboardX's gs:// event writer needs google-cloud-storage.
        "tpu": ["jax[tpu]==0.10.2", "gcsfs>=2026.8.2", "google-cloud-storage>=2.18,<4"],
    },
    entry_points={"console_scripts": ["crab-convert-weights=crab_jax.cli.convert_weights.cli:main"]},
)
