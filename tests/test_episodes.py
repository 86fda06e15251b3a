"""Clip pools and N-way K-shot episodes: exact counts, disjointness, labels, aux pairing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from lightman.tasks.episodes import (
    ClipPool,
    EpisodeConfig,
    EpisodeError,
    EpisodeSampler,
    PoolError,
    default_aux_names,
    seeded_episodes,
    to_tensor,
)
from lightman.tasks.labels import NATIVE, build_scheme
from lightman.tasks.schema import INDEX_SCHEMA, ClipRecord, Preprocessed, row_from_record

MICRO = ("happiness", "surprise", "disgust", "repression", "others")
CK = NATIVE["ckplus"]  # neutral, anger, contempt, disgust, fear, happy, sadness, surprise


def make_pool(
    counts,
    class_names=MICRO,
    name="train",
    dataset="casme2",
    shape=(2, 4, 4, 3),
    seed=0,
    subjects=4,
):
    """A pool with counts[c] clips of class c, random frames, subjects round-robin."""
    labels = np.repeat(np.arange(len(counts)), counts)
    n = labels.size
    rng = np.random.default_rng(seed)
    subj = [f"{dataset}/s{i % subjects}" for i in range(n)]
    return ClipPool(
        frames=rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
        labels=labels,
        subjects=subj,
        clip_ids=[f"{dataset}/s{i % subjects}/clip{i}" for i in range(n)],
        datasets=[dataset] * n,
        emotions=[class_names[c] for c in labels],
        expressions=["micro" if dataset != "ckplus" else "macro"] * n,
        class_names=class_names,
        name=name,
    )


def index_of(pool: ClipPool) -> dict[str, int]:
    return {c: i for i, c in enumerate(pool.clip_ids.tolist())}


# --- to_tensor -------------------------------------------------------------------------


def test_to_tensor_layout_and_scale():
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 3, 4, 5, 3), dtype=np.uint8)
    x = to_tensor(frames)
    assert x.dtype == torch.float32 and tuple(x.shape) == (2, 3, 3, 4, 5)
    for n, m, c, h, w in [(0, 0, 0, 0, 0), (1, 2, 2, 3, 4), (1, 1, 1, 2, 3)]:
        assert x[n, m, c, h, w].item() == pytest.approx(frames[n, m, h, w, c] / 255.0)
    assert x.min() >= 0 and x.max() <= 1
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(frames.astype(np.float32))


# --- episodes --------------------------------------------------------------------------


@pytest.mark.parametrize("ways,shots,query", [(3, 1, 2), (2, 5, 1), (5, 2, 3)])
def test_episode_counts_disjoint_and_labels(ways, shots, query):
    pool = make_pool([8, 9, 10, 7, 12])
    cfg = EpisodeConfig(ways=ways, shots=shots, query=query, aux_shots=0)
    idx = index_of(pool)
    for ep in EpisodeSampler(pool, cfg, seed=3).sample_batch(10):
        assert ep.aux_x is None and ep.aux_y is None and ep.aux_ids == ()
        assert len(set(ep.classes)) == ways
        assert ep.support_x.shape == (ways * shots, 2, 3, 4, 4)
        assert ep.query_x.shape == (ways * query, 2, 3, 4, 4)
        assert np.bincount(ep.support_y.numpy(), minlength=ways).tolist() == [shots] * ways
        assert np.bincount(ep.query_y.numpy(), minlength=ways).tolist() == [query] * ways
        assert ep.support_y.dtype == torch.int64 and ep.query_y.dtype == torch.int64
        assert not set(ep.support_ids) & set(ep.query_ids)
        assert len(set(ep.support_ids)) == ways * shots and len(set(ep.query_ids)) == ways * query
        # labels are episode-relative and consistent with `classes`; tensors match the ids
        for ids, ys, xs in (
            (ep.support_ids, ep.support_y, ep.support_x),
            (ep.query_ids, ep.query_y, ep.query_x),
        ):
            for cid, y, x in zip(ids, ys.tolist(), xs):
                assert pool.labels[idx[cid]] == ep.classes[y]
                assert torch.equal(x, to_tensor(pool.frames[idx[cid]][None])[0])


def test_episode_order_is_shuffled():
    pool = make_pool([10, 10, 10])
    eps = EpisodeSampler(
        pool, EpisodeConfig(ways=3, shots=3, query=3, aux_shots=0), seed=0
    ).sample_batch(5)
    grouped = [sorted(e.support_y.tolist()) == e.support_y.tolist() for e in eps]
    assert not all(grouped)


def test_ways_only_from_classes_with_enough_clips_and_uniform():
    pool = make_pool([6, 6, 6, 5, 0])  # shots + query = 6: classes 3 and 4 cannot serve
    sampler = EpisodeSampler(pool, EpisodeConfig(ways=2, shots=3, query=3, aux_shots=0), seed=11)
    counts = np.zeros(5)
    for _ in range(600):
        for c in sampler.sample().classes:
            counts[c] += 1
    assert counts[3] == counts[4] == 0
    # 2 of the 3 eligible classes per episode: 400 expected each
    assert np.all(np.abs(counts[:3] - 400) < 40), counts


def test_deterministic_for_seed():
    pool = make_pool([8, 8, 8, 8])
    cfg = EpisodeConfig(ways=3, shots=2, query=2, aux_shots=0)
    a = EpisodeSampler(pool, cfg, seed=5).sample_batch(4)
    b = EpisodeSampler(pool, cfg, seed=5).sample_batch(4)
    c = EpisodeSampler(pool, cfg, seed=6).sample_batch(4)
    assert [(e.support_ids, e.query_ids, e.classes) for e in a] == [
        (e.support_ids, e.query_ids, e.classes) for e in b
    ]
    assert all(
        torch.equal(x.support_x, y.support_x) and torch.equal(x.query_y, y.query_y)
        for x, y in zip(a, b)
    )
    assert [e.support_ids for e in a] != [e.support_ids for e in c]


def test_seeded_episodes_are_the_same_for_every_learner():
    pool = make_pool([8, 8, 8, 8])
    aux = make_pool([3] * 8, class_names=CK, dataset="ckplus", name="ck", seed=1)
    cfg = EpisodeConfig(ways=3, shots=1, query=2, aux_shots=2)
    first = seeded_episodes(pool, cfg, n=7, seed=2, aux_pool=aux)
    second = seeded_episodes(pool, cfg, n=7, seed=2, aux_pool=aux)
    assert len(first) == 7
    ids = [(e.support_ids, e.query_ids, e.aux_ids) for e in first]
    assert ids == [(e.support_ids, e.query_ids, e.aux_ids) for e in second]
    assert ids == [(e.support_ids, e.query_ids, e.aux_ids) for e in first]  # iterating again
    assert torch.equal(first[3].query_x, second[3].query_x) and torch.equal(
        first[3].aux_y, second[3].aux_y
    )
    assert [e.query_ids for e in first[2:4]] == [ids[2][1], ids[3][1]]
    assert len({i[0] for i in ids}) > 1  # not one episode repeated
    # a training step's meta-batch: the seed (seed, step) draws new episodes every step
    step1, step2 = (seeded_episodes(pool, cfg, n=4, seed=(2, it)) for it in (1, 2))
    assert [e.support_ids for e in step1] != [e.support_ids for e in step2]


def test_error_names_pool_classes_and_counts():
    pool = make_pool([4, 12, 9, 10, 3], name="train")
    with pytest.raises(EpisodeError) as err:
        EpisodeSampler(pool, EpisodeConfig(ways=5, shots=5, query=5), seed=0)
    msg = str(err.value)
    assert "5-way 5-shot 5-query needs 5 classes with >= 10 clips" in msg
    assert "pool 'train'" in msg
    for part in ("happiness 4", "surprise 12", "disgust 9", "repression 10", "others 3"):
        assert part in msg


def test_config_checks():
    with pytest.raises(ValueError, match="shots"):
        EpisodeConfig(shots=0)
    with pytest.raises(ValueError, match="aux_pairing"):
        EpisodeConfig(aux_pairing="random")
    from lightman.platform.config import ConfigError, load_config

    cfg = load_config(EpisodeConfig, overrides=["ways=3", "shots=1", "aux_pairing=unpaired"])
    assert (cfg.ways, cfg.shots, cfg.aux_pairing) == (3, 1, "unpaired")
    with pytest.raises(ConfigError, match="way"):
        load_config(EpisodeConfig, overrides=["way=3"])


# --- auxiliary batch -------------------------------------------------------------------


def test_default_aux_names_by_synonym_and_valence():
    assert default_aux_names(MICRO, CK) == {
        "happiness": ("happy",),
        "surprise": ("surprise",),
        "disgust": ("disgust",),
    }
    comp = default_aux_names(("negative", "positive", "surprise"), CK)
    assert comp == {
        "negative": ("anger", "contempt", "disgust", "fear", "sadness"),
        "positive": ("happy",),
        "surprise": ("surprise",),
    }
    assert default_aux_names(("amusement", "tense"), ("negative", "positive")) == {
        "amusement": ("positive",)
    }


def test_aux_paired_by_class_name():
    pool = make_pool([6, 6, 6, 6, 6])
    aux = make_pool([4] * 8, class_names=CK, dataset="ckplus", name="ck", seed=1)
    aux_idx = index_of(aux)
    expected = {"happiness": "happy", "surprise": "surprise", "disgust": "disgust"}
    cfg = EpisodeConfig(ways=4, shots=1, query=1, aux_shots=3)
    seen_unpaired = False
    for ep in EpisodeSampler(pool, cfg, seed=4, aux_pool=aux).sample_batch(15):
        assert ep.aux_x.shape == (4 * 3, 2, 3, 4, 4) and len(ep.aux_ids) == 12
        assert len(set(ep.aux_ids)) == 12  # 32 macro clips: no clip twice
        aux_y = ep.aux_y.tolist()
        for j, c in enumerate(ep.classes):
            name = MICRO[c]
            if name in expected:
                assert aux_y.count(j) == 3
            else:
                assert aux_y.count(j) == 0
        for cid, y, x in zip(ep.aux_ids, aux_y, ep.aux_x):
            assert torch.equal(x, to_tensor(aux.frames[aux_idx[cid]][None])[0])
            if y >= 0:
                assert CK[aux.labels[aux_idx[cid]]] == expected[MICRO[ep.classes[y]]]
        n_unmatched = sum(MICRO[c] not in expected for c in ep.classes)
        assert aux_y.count(-1) == 3 * n_unmatched
        seen_unpaired |= n_unmatched > 0
    assert seen_unpaired


def test_aux_custom_names_unpaired_mode_and_errors():
    pool = make_pool([4, 4, 4, 4, 4])
    aux = make_pool([2] * 8, class_names=CK, dataset="ckplus", name="ck", seed=1)
    aux_idx = index_of(aux)
    cfg = EpisodeConfig(
        ways=5, shots=1, query=1, aux_shots=3
    )  # 3 > 2 neutral clips: with replacement
    ep = EpisodeSampler(pool, cfg, seed=0, aux_pool=aux, aux_names={"others": "neutral"}).sample()
    others_way = ep.classes.index(MICRO.index("others"))
    for cid, y in zip(ep.aux_ids, ep.aux_y.tolist()):
        assert y in (others_way, -1)
        if y == others_way:
            assert CK[aux.labels[aux_idx[cid]]] == "neutral"
    assert ep.aux_y.tolist().count(others_way) == 3 and ep.aux_y.tolist().count(-1) == 12

    unpaired = EpisodeSampler(
        pool,
        EpisodeConfig(ways=3, shots=1, query=1, aux_shots=2, aux_pairing="unpaired"),
        seed=0,
        aux_pool=aux,
    ).sample()
    assert unpaired.aux_y.tolist() == [-1] * 6

    with pytest.raises(EpisodeError, match="'joy' is not a class of pool 'train'"):
        EpisodeSampler(pool, cfg, seed=0, aux_pool=aux, aux_names={"joy": "happy"})
    with pytest.raises(EpisodeError, match=r"\['glad'\], not classes of aux pool 'ck'"):
        EpisodeSampler(pool, cfg, seed=0, aux_pool=aux, aux_names={"happiness": ("happy", "glad")})
    small = make_pool([2] * 8, class_names=CK, dataset="ckplus", name="ck", shape=(2, 8, 8, 3))
    with pytest.raises(EpisodeError, match=r"\(2, 8, 8, 3\).*\(2, 4, 4, 3\)"):
        EpisodeSampler(pool, cfg, seed=0, aux_pool=small)


# --- pools -----------------------------------------------------------------------------


def _rows(n, shape, start=0, label_of=lambda i: i % 3):
    rng = np.random.default_rng(start)
    rows, frames = [], []
    for i in range(start, start + n):
        rec = ClipRecord(
            dataset="smic",
            subject=f"smic/s{i % 2}",
            filename=f"c{i}",
            expression="micro",
            emotion=("negative", "positive", "surprise")[label_of(i)],
            onset=0,
            apex=1,
            offset=2,
            fps=100.0,
        )
        f = rng.integers(0, 256, size=shape, dtype=np.uint8)
        pre = Preprocessed(
            frames=f,
            apex=1,
            apex_source="annotated",
            offset=2,
            num_frames=3,
            sampled=(0, 1),
            face_box=None,
        )
        rows.append(row_from_record(rec, pre, label=label_of(i), flow=None))
        frames.append(f)
    return rows, frames


def test_from_table_round_trip_over_chunks_and_slices():
    rows_a, fa = _rows(3, (2, 3, 5, 3))
    rows_b, fb = _rows(4, (2, 3, 5, 3), start=3)
    table = pa.concat_tables(
        [
            pa.Table.from_pylist(rows_a, schema=INDEX_SCHEMA),
            pa.Table.from_pylist(rows_b, schema=INDEX_SCHEMA),
        ]
    )
    assert table.column("frames").num_chunks == 2
    pool = ClipPool.from_table(table, ("negative", "positive", "surprise"), name="smic")
    assert pool.frames.shape == (7, 2, 3, 5, 3) and len(pool) == 7
    np.testing.assert_array_equal(pool.frames, np.stack(fa + fb))
    assert pool.labels.tolist() == [i % 3 for i in range(7)] and pool.labels.dtype == np.int64
    assert pool.clip_ids.tolist() == [f"smic/s{i % 2}/c{i}" for i in range(7)]
    assert (
        pool.subjects[1] == "smic/s1"
        and pool.emotions[2] == "surprise"
        and pool.expressions[0] == "micro"
    )
    sliced = ClipPool.from_table(
        pa.Table.from_pylist(rows_b, schema=INDEX_SCHEMA).slice(1, 2),
        ("negative", "positive", "surprise"),
    )
    np.testing.assert_array_equal(sliced.frames, np.stack(fb[1:3]))
    for binary_type in (pa.large_binary(), pa.binary_view()):  # other readers' encodings
        other = table.set_column(
            table.schema.get_field_index("frames"),
            "frames",
            table.column("frames").cast(binary_type),
        )
        recast = ClipPool.from_table(other, ("negative", "positive", "surprise"))
        np.testing.assert_array_equal(recast.frames, pool.frames)


def test_a_pool_without_frames_holds_labels_and_shape_only_and_is_never_sampled():
    classes = ("negative", "positive", "surprise")
    rows, _ = _rows(9, (2, 3, 5, 3))
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    full = ClipPool.from_table(table, classes)
    meta = ClipPool.from_table(table.drop_columns(["frames", "flow"]), classes, frames=False)
    assert not meta.frames_loaded and full.frames_loaded
    assert meta.clip_shape == full.clip_shape == (2, 3, 5, 3) and len(meta) == 9
    for f in ("labels", "subjects", "clip_ids", "datasets", "emotions", "expressions"):
        np.testing.assert_array_equal(getattr(meta, f), getattr(full, f))
    part = meta.by_subjects(["smic/s1"]).relabel(lambda d, e: 0 if e == "surprise" else 1, "ab")
    assert part.clip_ids.tolist() == [f"smic/s1/c{i}" for i in (1, 3, 5, 7)]
    assert not part.frames_loaded and part.frames.shape == (4, 2, 3, 5, 3)
    assert part.frames.strides[0] == 0 and not part.frames.flags.writeable  # a view, no memory
    cfg = EpisodeConfig(ways=2, shots=1, query=1, aux_shots=0)
    sampler = EpisodeSampler(meta, cfg, seed=0)  # checking that it could serve works
    with pytest.raises(PoolError, match="holds no frames"):
        sampler.sample()
    with pytest.raises(PoolError, match=r"lacks column\(s\) \['frames_shape'\]"):
        ClipPool.from_table(table.drop_columns(["frames_shape"]), classes, frames=False)


def test_from_table_errors_name_clips():
    classes = ("negative", "positive", "surprise")
    rows, _ = _rows(2, (2, 3, 5, 3))
    odd, _ = _rows(1, (2, 4, 4, 3), start=2)
    with pytest.raises(PoolError, match=r"different frame shapes.*smic/s0/c2"):
        ClipPool.from_table(pa.Table.from_pylist(rows + odd, schema=INDEX_SCHEMA), classes)
    with pytest.raises(PoolError, match=r"lacks column\(s\) \['frames'\]"):
        ClipPool.from_table(
            pa.Table.from_pylist(rows, schema=INDEX_SCHEMA).drop_columns(["frames"]), classes
        )
    bare = [dict(r, frames=b"", frames_shape=[]) for r in rows]
    with pytest.raises(PoolError, match="not materialised.*smic/s0/c0"):
        ClipPool.from_table(pa.Table.from_pylist(bare, schema=INDEX_SCHEMA), classes)
    short = [rows[0], dict(rows[1], frames=rows[1]["frames"][:-1])]
    with pytest.raises(PoolError, match=r"smic/s1/c1 \(89 bytes\)"):
        ClipPool.from_table(pa.Table.from_pylist(short, schema=INDEX_SCHEMA), classes)
    with pytest.raises(PoolError, match=r"smic/s1/c1 \(label 1\)"):
        ClipPool.from_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), ("negative",))


def test_pool_validation():
    pool = make_pool([2, 2])
    with pytest.raises(PoolError, match=r"subjects has shape \(3,\), expected \(4,\)"):
        ClipPool(
            pool.frames,
            pool.labels,
            pool.subjects[:3],
            pool.clip_ids,
            pool.datasets,
            pool.emotions,
            pool.expressions,
            pool.class_names,
        )
    with pytest.raises(PoolError, match="duplicated clip ids: casme2/s0/clip0"):
        ClipPool(
            pool.frames,
            pool.labels,
            pool.subjects,
            ["casme2/s0/clip0"] * 2 + ["a", "b"],
            pool.datasets,
            pool.emotions,
            pool.expressions,
            pool.class_names,
        )
    with pytest.raises(PoolError, match="uint8"):
        ClipPool(
            pool.frames.astype(np.float32),
            pool.labels,
            pool.subjects,
            pool.clip_ids,
            pool.datasets,
            pool.emotions,
            pool.expressions,
            pool.class_names,
        )


def test_subset_by_subjects_and_relabel():
    pool = make_pool([3, 3, 3, 3, 3], subjects=3)
    sub = pool.subset([4, 0])
    assert sub.clip_ids.tolist() == [pool.clip_ids[4], pool.clip_ids[0]]
    np.testing.assert_array_equal(sub.frames[0], pool.frames[4])
    mask = pool.labels == 2
    assert pool.subset(mask).labels.tolist() == [2, 2, 2]
    with pytest.raises(PoolError, match="out of range"):
        pool.subset([15])

    s0 = pool.by_subjects(["casme2/s0"], name="s0")
    assert set(s0.subjects.tolist()) == {"casme2/s0"} and len(s0) == 5 and s0.name == "s0"
    with pytest.raises(PoolError, match="no clips of subject.*s0.*prefixed by dataset"):
        pool.by_subjects(["s0"])
    assert len(pool.by_subjects(["casme2/s1", "s9"], strict=False)) == 5

    scheme = build_scheme("composite3", ["casme2"])
    comp = pool.relabel(scheme.label, scheme.class_names)  # "others" is outside the scheme
    assert len(comp) == 12 and comp.class_names == ("negative", "positive", "surprise")
    by_emotion = dict(zip(comp.emotions.tolist(), comp.labels.tolist()))
    assert by_emotion == {"happiness": 1, "surprise": 2, "disgust": 0, "repression": 0}
    flipped = pool.relabel(
        np.where(pool.labels == 0, 1, np.where(pool.labels == 1, 0, -1)), ("b", "a")
    )
    assert len(flipped) == 6 and flipped.labels.tolist() == [1, 1, 1, 0, 0, 0]
    samm = build_scheme("composite3", ["samm"])
    with pytest.raises(
        PoolError, match="clip casme2/s0/clip9: unknown emotion 'repression' for samm"
    ):
        pool.relabel(
            lambda d, e: samm.label("samm", e), samm.class_names
        )  # SAMM has no "repression"
