"""The tokenization cache: a JSONL file tokenized once into the indexed format, reused, invalidated by every key
part, rebuilt when corrupt, built by rank 0 under torch.distributed."""

import json
import os
import random
import shutil

import pytest
from chat_fixtures import assert_same_samples, conv, write_jsonl

from megatron_align.data import token_cache
from megatron_align.data.builder import build_data
from megatron_align.data.config import DEFAULT_TOKENIZER, DataConfig
from megatron_align.data.errors import DataError
from megatron_align.data.indexed import IndexedChatDataset
from megatron_align.data.templates import build_template
from megatron_align.data.tokenized import JsonlChatDataset
from megatron_align.data.tokenizer import load_tokenizer

WORDS = "alpha beta gamma delta river stone seven list reverse sum of the".split()


def random_corpus(path, n, seed=0):
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    recs = []
    for i in range(n):
        turns = [text(rng.randint(1, 12)) for _ in range(2 * rng.randint(1, 3))]
        recs.append(conv(*turns, system=text(4) if i % 5 == 0 else None,
                         category=[None, "math", "code"][i % 3] if i % 7 else "rare"))
    return write_jsonl(path, recs)


def assert_same(a, b):
    """Same samples and the same stats."""
    assert_same_samples(a, b)
    assert a.stats.as_dict() == b.stats.as_dict()


@pytest.fixture
def builds(monkeypatch):
    """Counts the cache builds."""
    count = []
    real = token_cache.build_index

    def counting(*args, **kwargs):
        count.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(token_cache, "build_index", counting)
    return count


def test_built_once_reused_and_equal_to_tokenizing_in_memory(tmp_path, tok, builds):
    path = random_corpus(tmp_path / "train.jsonl", 120)
    tmpl = build_template("llama3", tok)
    cache = str(tmp_path / "cache")
    for seq, policy in ((None, "truncate"), (24, "truncate"), (24, "drop")):
        first = token_cache.cached_dataset(path, tmpl, seq, policy, cache_dir=cache)
        again = token_cache.cached_dataset(path, tmpl, seq, policy, cache_dir=cache)
        ref = JsonlChatDataset(path, tmpl, seq, policy)
        assert_same(first, ref)
        assert_same(again, ref)
        assert first.category_names() == ref.category_names()
    assert len(builds) == 3  # one per (seq_length, overlong), none on the second open
    assert len(os.listdir(cache)) == 3 and all(n.startswith("train.jsonl-") for n in os.listdir(cache))
    # token ids in the vocabulary's smallest dtype, the mask as bits: ~2 bytes + 1 bit per token
    entry = token_cache.ensure_entry(path, tmpl, None, "truncate", "error", cache)
    n_tokens = int(JsonlChatDataset(path, tmpl).lengths.sum())
    assert os.path.getsize(entry + ".bin") < n_tokens * 2 * 1.1


def test_every_key_part_invalidates(tmp_path, tok, builds, monkeypatch):
    path = random_corpus(tmp_path / "train.jsonl", 30)
    cache = str(tmp_path / "cache")
    tmpl = build_template("llama3", tok)

    def entry(template=tmpl, seq=64, policy="truncate", bad="error", p=path):
        return token_cache.ensure_entry(p, template, seq, policy, bad, cache)

    base = entry()
    assert entry() == base and len(builds) == 1
    others = {entry(seq=48), entry(policy="drop"), entry(bad="skip"), entry(template=build_template("chatml", tok)),
              entry(template=build_template("llama3", tok, "Be brief."))}
    assert len(others | {base}) == 6 and len(builds) == 6
    # the tokenizer: its config (another copy of the directory with one more field)
    tdir = tmp_path / "tok"
    shutil.copytree(DEFAULT_TOKENIZER, tdir)
    assert entry(template=build_template("llama3", load_tokenizer(str(tdir)))) == base  # same bytes, same key
    cfg = json.loads((tdir / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 77
    (tdir / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert entry(template=build_template("llama3", load_tokenizer(str(tdir)))) != base
    # the content: one changed character, same size, same mtime
    st = os.stat(path)
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8").write(text.replace("alpha", "alphA", 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(path) == st.st_size
    changed = entry()
    assert changed != base
    assert entry(p=path) == changed
    # the code (format version or data-package sources)
    n = len(builds)
    monkeypatch.setattr(token_cache, "code_fingerprint", lambda: "megatron_align.chat.v99:0")
    assert entry() != changed and len(builds) == n + 1


def test_large_file_fingerprint_samples_blocks(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(os.urandom(16 << 20))
    path.write_bytes(data)
    st = os.stat(path)
    fp = token_cache.file_fingerprint(str(path))
    blocks = token_cache.sample_offsets(len(data))
    assert len(blocks) == token_cache.SAMPLE_BLOCKS + 2 and sum(n for _, n in blocks) < len(data) / 2
    for off in (5, blocks[len(blocks) // 2][0] + 7, len(data) - 3):  # head, a sampled block, tail
        changed = bytearray(data)
        changed[off] ^= 0xFF
        path.write_bytes(changed)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert token_cache.file_fingerprint(str(path)) != fp, off
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: a rebuild, never a stale entry
    assert token_cache.file_fingerprint(str(path)) != fp


def test_corrupt_or_partial_entry_is_rebuilt(tmp_path, tok, builds):
    path = random_corpus(tmp_path / "train.jsonl", 40)
    cache = str(tmp_path / "cache")
    tmpl = build_template("chatml", tok)
    ref = JsonlChatDataset(path, tmpl, 32)
    prefix = token_cache.ensure_entry(path, tmpl, 32, "truncate", "error", cache)
    os.makedirs(os.path.dirname(prefix) + ".tmp999.deadbeef")  # a build that died: ignored
    for damage in ("truncate_bin", "drop_meta", "garbage_idx", "drop_docs"):
        if damage == "truncate_bin":
            with open(prefix + ".bin", "r+b") as f:
                f.truncate(os.path.getsize(prefix + ".bin") - 3)
        elif damage == "drop_meta":
            os.remove(prefix + ".meta.json")
        elif damage == "garbage_idx":
            open(prefix + ".idx", "wb").write(b"not an index")
        else:
            os.remove(prefix + ".docs.npy")
        with pytest.raises(DataError):
            IndexedChatDataset(prefix)
        n = len(builds)
        assert_same(token_cache.cached_dataset(path, tmpl, 32, cache_dir=cache), ref)
        assert len(builds) == n + 1, damage


def test_errors_name_the_file_line_and_leave_no_entry(tmp_path, tok):
    path = write_jsonl(tmp_path / "bad.jsonl", [conv("q", "a"), "{broken"])
    cache = tmp_path / "cache"
    tmpl = build_template("llama3", tok)
    with pytest.raises(DataError, match="bad.jsonl:2: malformed JSON"):
        token_cache.cached_dataset(path, tmpl, cache_dir=str(cache))
    assert not cache.exists() or os.listdir(cache) == []
    with pytest.raises(DataError, match="nothing.jsonl: no such file"):
        token_cache.cached_dataset(str(tmp_path / "nothing.jsonl"), tmpl, cache_dir=str(cache))
    ds = token_cache.cached_dataset(path, tmpl, on_bad_line="skip", cache_dir=str(cache))
    assert len(ds) == 1 and ds.stats.n_skipped_bad == 1


def test_build_data_uses_the_cache_and_eval_categories_read_no_sample(tmp_path, monkeypatch):
    from megatron_align.stages.sft import eval_categories

    path = random_corpus(tmp_path / "train.jsonl", 50)
    cfg = DataConfig(path=path, eval_path=path, template="llama3", seq_length=64, cache_dir=str(tmp_path / "c"))
    bundle = build_data(cfg)
    assert isinstance(bundle.train, IndexedChatDataset) and bundle.train.prefix.startswith(str(tmp_path / "c"))
    ref = JsonlChatDataset(path, bundle.template, 64)
    assert_same(bundle.train, ref)
    monkeypatch.setattr(IndexedChatDataset, "__getitem__", lambda self, i: pytest.fail("built a sample"))
    assert eval_categories(bundle.eval) == ["code", "math", "rare"]
    with pytest.raises(ValueError, match="data.cache_dir"):
        DataConfig(cache_dir="").validate()


def _rank_opens(path, cache, bad_path):
    import torch.distributed as dist

    from megatron_align.errors import UserError

    dist.init_process_group("gloo")
    calls = []
    real = token_cache.build_index
    token_cache.build_index = lambda *a, **k: calls.append(1) or real(*a, **k)
    tmpl = build_template("llama3", load_tokenizer(DEFAULT_TOKENIZER))
    ds = token_cache.cached_dataset(path, tmpl, 40, cache_dir=cache)
    out = {"builds": len(calls), "prefix": ds.prefix, "lengths": ds.lengths.tolist(),
           "ids": [ds[i].input_ids.tolist() for i in range(len(ds))], "n_truncated": ds.stats.n_truncated}
    try:
        token_cache.cached_dataset(bad_path, tmpl, cache_dir=cache)
    except UserError as exc:
        out["error"] = str(exc)
    return out


@pytest.mark.distributed
def test_rank0_builds_others_wait_and_share_errors(tmp_path, tok):
    from helpers.dist import run_distributed

    path = random_corpus(tmp_path / "train.jsonl", 60)
    bad = write_jsonl(tmp_path / "bad.jsonl", [conv("q", "a"), conv("q", "a"), "[1, 2"])
    r0, r1 = run_distributed(_rank_opens, 2, path, str(tmp_path / "cache"), bad)
    assert (r0["builds"], r1["builds"]) == (1, 0)
    assert r0["prefix"] == r1["prefix"] and r0["lengths"] == r1["lengths"] and r0["ids"] == r1["ids"]
    ref = JsonlChatDataset(path, build_template("llama3", tok), 40)
    assert r0["lengths"] == ref.lengths.tolist() and r0["n_truncated"] == ref.stats.n_truncated
    assert r0["error"] == r1["error"] and "bad.jsonl:3: malformed JSON" in r1["error"]


def test_directory_and_glob_fingerprints(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for k in range(3):
        random_corpus(d / f"part{k}.jsonl", 5, seed=k)
    by_dir = token_cache.source_fingerprint(str(d))
    by_glob = token_cache.source_fingerprint(str(d / "part*.jsonl"))
    assert [n for n, _ in token_cache.source_files(str(d / "part*.jsonl"))] == [str(d / f"part{k}.jsonl")
                                                                            for k in range(3)]
    (d / "part1.jsonl").write_text((d / "part1.jsonl").read_text() + "\n")
    assert token_cache.source_fingerprint(str(d)) != by_dir
    edited = token_cache.source_fingerprint(str(d / "part*.jsonl"))
    assert edited != by_glob
    os.rename(d / "part2.jsonl", d / "part9.jsonl")  # a renamed shard changes the key too
    assert token_cache.source_fingerprint(str(d / "part*.jsonl")) != edited
    with pytest.raises(DataError, match="no such file"):
        token_cache.source_fingerprint(str(d / "none*.jsonl"))
    name = os.path.basename(token_cache.entry_dir(str(tmp_path), str(d / "part*.jsonl"), {"k": 1}))
    assert name.startswith("part_.jsonl-")
