"""tf.data input: the converter's shards -> batches of uint8 images and float32 labels.

Pipeline of :func:`make_dataset` (one split, or several splits filtered by fold)::

    shard paths (manifest order)
      -> [distributed: shard by file when #files >= #input pipelines]
      -> training: shuffle the file list, parallel non-deterministic interleave of
         TFRecordDatasets; evaluation: parallel interleave, deterministic order
      -> [distributed, few files: shard by record (then the interleave is deterministic)]
      -> parse (vectorised: batch, schema.parse_batch, unbatch; see PARSE_MODES)
      -> filter normal / fold (before any JPEG is decoded)
      -> parallel decode + resize (schema.decode_image) to uint8 [H, W, 3]
      -> training, one input pipeline, in memory (records * H * W * 3 bytes fit
         --cache_budget_gb): the whole split as ONE cached element [N, ...] (decoded
         once, the first epoch), then each epoch a fresh permutation gathered in batches
         (drop_remainder; :func:`_gather_batches`)
      -> otherwise: cache (in memory when it fits, else a file cache in cache_dir, else
         none) -> training: shuffle (reshuffled every epoch) -> batch (training:
         drop_remainder)
      -> labels / weights / meta -> prefetch(AUTOTUNE)

Elements: ``(images, labels)``; ``images`` uint8 ``[B, H, W, 3]`` (0..255), ``labels``
float32 ``[B]`` (1.0 male, 0.0 female), or with ``with_age`` a dict ``{"sex": [B] float32,
"age": [B] float32 years (-1 unknown)}``. With ``sample_weights`` a third element: float32
``[B]`` class-balancing weights ``n / (2 * n_class)`` (from the class counts of the
records this dataset reads), or with ``with_age`` a dict ``{"sex": w, "age": 1.0 where the
age is known else 0.0}``. With ``with_meta`` a last element, a dict of ``[B]`` tensors:
``patient_id`` (string), ``eye`` (string, left/right), ``filename`` (string), ``age``
(int32 years, -1 unknown).

``normal_only`` keeps eyes whose own keywords are exactly normal fundus; evaluation splits
(``val``, ``test`` and the validation fold of :func:`training_split`) always apply it.

Size: about 510 lines, kept in one module on purpose: every stage above is one tf.data
choice with its measurement beside it, and they only make sense read in order.

File cache note: TensorFlow writes ``<cache file>_0.lockfile`` while a cache is being
written; a run killed mid-epoch leaves it, and the next run fails with a clear
"concurrent caching iterator" error: delete the cache dir's files for that split then.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Sequence

import tensorflow as tf

from pipeline import manifest as manifest_lib
from pipeline import schema

AUTOTUNE = tf.data.AUTOTUNE
EVAL_SPLITS = ("val", "test")
# "vectorized": batch -> tf.io.parse_example -> unbatch; "per_record": parallel
# parse_single_example. Vectorised measured faster (BUILD_NOTES.md, "Input pipeline
# benchmark"), so it is the default.
PARSE_MODES = ("vectorized", "per_record")
PARSE_BATCH = 64            # serialized records per vectorised parse_example call
_GB = 1 << 30


@dataclasses.dataclass(frozen=True)
class ReadConfig:
    """How a split is read. Sizes in pixels, budgets in GiB."""

    image_size: int = 384            # training size, pixels (decoded then resized)
    batch_size: int = 64             # GLOBAL batch size
    cache_budget_gb: float = 4.0     # in-memory cache of decoded uint8 when it fits
    cache_dir: str | None = None     # file cache otherwise (None: no cache)
    shuffle_buffer: int | None = None  # default: whole split when small
    sample_weights: bool = False     # class-balancing weights as a third element
    with_meta: bool = False          # eval: (images, labels, meta dict)
    with_age: bool = False           # label becomes {"sex": y, "age": age}
    normal_only: bool = True         # drop records with normal == 0 (always for val/test)
    seed: int | None = None
    parse: str = "vectorized"        # one of PARSE_MODES
    cycle_length: int | None = None  # shards read at once (None: min(#shards, 16))

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"--image_size={self.image_size}: must be >= 8 pixels")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size={self.batch_size}: must be >= 1")
        if self.cache_budget_gb < 0:
            raise ValueError(f"--cache_budget_gb={self.cache_budget_gb}: must be >= 0")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer={self.shuffle_buffer}: must be >= 1")
        if self.parse not in PARSE_MODES:
            raise ValueError(f"parse={self.parse!r}: one of {PARSE_MODES}")


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Which records: the union of ``splits``, optionally filtered by fold.

    ``evaluation`` forces the normal-eye filter (validation and test sets)."""

    splits: tuple[str, ...]
    folds_include: tuple[int, ...] | None = None
    folds_exclude: tuple[int, ...] | None = None
    evaluation: bool = False

    @property
    def name(self) -> str:
        """Readable id, e.g. ``train+val[fold!=2]``."""
        s = "+".join(self.splits)
        if self.folds_include is not None:
            s += "[fold in " + ",".join(map(str, self.folds_include)) + "]"
        if self.folds_exclude is not None:
            s += "[fold not in " + ",".join(map(str, self.folds_exclude)) + "]"
        return s


@dataclasses.dataclass(frozen=True)
class SplitStats:
    """Record and class counts after filtering."""

    records: int
    male: int
    female: int

    def class_weights(self) -> tuple[float, float]:
        """``(female_weight, male_weight)`` = ``n / (2 * n_class)``; 1.0 for an absent
        class (it never occurs, so its weight is never used)."""
        n = self.records
        return (n / (2.0 * self.female) if self.female else 1.0,
                n / (2.0 * self.male) if self.male else 1.0)


def as_spec(split: str | Sequence[str] | SplitSpec, folds_include=None,
            folds_exclude=None) -> SplitSpec:
    """Normalise a split name, a list of names or a :class:`SplitSpec` (+ fold filters)."""
    if isinstance(split, SplitSpec):
        spec = split
    else:
        names = (split,) if isinstance(split, str) else tuple(split)
        if not names:
            raise ValueError("no split given")
        spec = SplitSpec(names, evaluation=all(n in EVAL_SPLITS for n in names))
    if folds_include is not None:
        spec = dataclasses.replace(spec, folds_include=tuple(int(f) for f in folds_include))
    if folds_exclude is not None:
        spec = dataclasses.replace(spec, folds_exclude=tuple(int(f) for f in folds_exclude))
    return spec


def training_split(data_dir: str, val_fold: int | None = None) -> tuple[SplitSpec, SplitSpec]:
    """``(train_spec, val_spec)`` for a converted dir.

    Without ``val_fold``: the ``train`` and ``val`` splits. With ``val_fold=i`` (data
    converted with ``--folds=K``): train on the train+val records with fold != i,
    validate on fold == i (normal eyes only)."""
    if val_fold is None:
        return SplitSpec(("train",)), SplitSpec(("val",), evaluation=True)
    man = manifest_lib.load(data_dir)
    k = int(man.get("folds", 0) or 0)
    if k < 2:
        raise ValueError(f"--val_fold={val_fold}: {manifest_lib.manifest_path(data_dir)} has "
                         f"no folds (convert with --folds=K)")
    if not 0 <= int(val_fold) < k:
        raise ValueError(f"--val_fold={val_fold}: must be in 0..{k - 1} (data has {k} folds)")
    pool = tuple(s for s in ("train", "val") if s in man["splits"])
    return (SplitSpec(pool, folds_exclude=(int(val_fold),)),
            SplitSpec(pool, folds_include=(int(val_fold),), evaluation=True))


def _check_spec(data_dir: str, man: dict, spec: SplitSpec) -> None:
    for s in spec.splits:
        if s not in man["splits"]:
            raise KeyError(f"{manifest_lib.manifest_path(data_dir)}: no split {s!r}; "
                           f"has {sorted(man['splits'])}")
    if (spec.folds_include is not None or spec.folds_exclude is not None) and \
            not int(man.get("folds", 0) or 0):
        raise ValueError(f"{manifest_lib.manifest_path(data_dir)}: fold filter {spec.name} "
                         f"on data converted without --folds")


def normal_filter(spec: SplitSpec, normal_only: bool) -> bool:
    """Whether ``spec`` keeps only normal eyes (``normal == 1``): ``normal_only`` asked for
    it, or ``spec`` is an evaluation split (always filtered)."""
    return bool(normal_only or spec.evaluation)


def _needs_filter(man: dict, spec: SplitSpec, normal_only: bool) -> tuple[bool, bool]:
    """(filter on normal, filter on fold): only what can drop a record."""
    by_normal = normal_filter(spec, normal_only) and any(
        man["splits"][s].get("normal_images", -1) != man["splits"][s].get("images", 0)
        for s in spec.splits)
    by_fold = spec.folds_include is not None or spec.folds_exclude is not None
    return by_normal, by_fold


def shard_files(data_dir: str, man: dict, spec: SplitSpec) -> list[str]:
    """Paths of the non-empty shards of ``spec``'s splits, in manifest order (``man``: the
    manifest of ``data_dir``). Raises FileNotFoundError naming the manifest when a listed
    shard is missing."""
    out = []
    for s in spec.splits:
        for entry in man["splits"][s]["shards"]:
            if int(entry.get("records", 1)) > 0:
                out.append(os.path.join(data_dir, entry["path"]))
    missing = [p for p in out if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{manifest_lib.manifest_path(data_dir)} lists missing "
                                f"shards: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out


def keep_mask(parsed: dict[str, tf.Tensor], spec: SplitSpec, by_normal: bool,
              by_fold: bool) -> tf.Tensor:
    """bool tensor, the shape of ``parsed['normal']``: the records ``spec`` keeps.

    ``parsed``: int64 ``normal`` (0/1) and ``fold`` (-1: none) tensors of one record or a
    batch. ``by_normal``: keep ``normal == 1`` only (see :func:`normal_filter`);
    ``by_fold``: apply ``spec``'s fold filters."""
    keep = tf.ones_like(parsed["normal"], dtype=tf.bool)
    if by_normal:
        keep = tf.logical_and(keep, tf.equal(parsed["normal"], 1))
    if by_fold:
        fold = parsed["fold"]
        if spec.folds_include is not None:
            inc = tf.constant(spec.folds_include or (-99,), tf.int64)
            keep = tf.logical_and(keep, tf.reduce_any(tf.equal(fold[..., None], inc), -1))
        if spec.folds_exclude is not None and spec.folds_exclude:
            exc = tf.constant(spec.folds_exclude, tf.int64)
            keep = tf.logical_and(keep, tf.logical_not(
                tf.reduce_any(tf.equal(fold[..., None], exc), -1)))
    return keep


@functools.lru_cache(maxsize=64)
def _stats_cached(data_dir: str, manifest_sha: str, spec: SplitSpec,
                  normal_only: bool) -> SplitStats:
    man = manifest_lib.load(data_dir)
    _check_spec(data_dir, man, spec)
    by_normal, by_fold = _needs_filter(man, spec, normal_only)
    if not by_normal and not by_fold:
        entries = [man["splits"][s] for s in spec.splits]
        return SplitStats(sum(manifest_lib.split_size(man, s) for s in spec.splits),
                          sum(int(e.get("male", 0)) for e in entries),
                          sum(int(e.get("female", 0)) for e in entries))
    files = shard_files(data_dir, man, spec)
    if not files:
        return SplitStats(0, 0, 0)
    keys = {k: schema.FEATURES[k] for k in ("normal", "fold", "patient/sex")}
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
    ds = ds.batch(1024).map(lambda s: tf.io.parse_example(s, keys),
                            num_parallel_calls=AUTOTUNE)
    male = female = 0
    for parsed in ds:
        keep = keep_mask(parsed, spec, by_normal, by_fold).numpy()
        sex = parsed["patient/sex"].numpy()[keep]
        male += int((sex == schema.SEX_MALE).sum())
        female += int((sex == schema.SEX_FEMALE).sum())
    return SplitStats(male + female, male, female)


def split_stats(data_dir: str, split: str | Sequence[str] | SplitSpec, *,
                normal_only: bool = True, folds_include=None,
                folds_exclude=None) -> SplitStats:
    """Records, males and females that :func:`make_dataset` yields for this split and
    filter (whole split; a distributed pipeline reads a share of it). From the manifest
    when no filter can drop a record, else by scanning the small features of the shards
    (no JPEG decoded); memoised per manifest content."""
    spec = as_spec(split, folds_include, folds_exclude)
    sha = manifest_lib.manifest_sha256(data_dir)
    return _stats_cached(os.path.abspath(data_dir), sha, spec, bool(normal_only))


def count_records(data_dir: str, split, **kw: Any) -> int:
    """Number of records after filtering; see :func:`split_stats`."""
    return split_stats(data_dir, split, **kw).records


def class_counts(data_dir: str, split, **kw: Any) -> dict[str, int]:
    """``{"male": M, "female": F}`` after filtering; see :func:`split_stats`."""
    st = split_stats(data_dir, split, **kw)
    return {"male": st.male, "female": st.female}


def decoded_bytes(records: int, image_size: int) -> int:
    """Bytes of ``records`` decoded uint8 images of ``image_size`` squared, 3 channels."""
    return int(records) * int(image_size) * int(image_size) * 3


def _options(training: bool, distributed: bool) -> tf.data.Options:
    """Options set on purpose (see BUILD_NOTES.md, "Input pipeline benchmark")."""
    opts = tf.data.Options()
    opts.autotune.enabled = True                      # tune parallelism and buffers
    opts.deterministic = not training                 # order matters only for evaluation
    opts.threading.max_intra_op_parallelism = 1       # parallelism comes from tf.data maps
    opt = opts.experimental_optimization
    opt.map_parallelization = True                    # any stateless map runs in parallel
    opt.parallel_batch = True                         # batch copies in parallel
    opt.map_and_batch_fusion = True
    opt.map_and_filter_fusion = True
    opt.inject_prefetch = True
    opts.experimental_slack = training                # fewer CPU/accelerator collisions
    if distributed:                                   # we shard ourselves (input_context)
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return opts


def _cache_file(cache_dir: str, data_dir: str, spec: SplitSpec, cfg: ReadConfig,
                normal_only: bool, pipeline: tuple[int, int]) -> str:
    sha = manifest_lib.manifest_sha256(data_dir)
    key = f"{sha}|{spec}|{cfg.image_size}|{normal_only}|{cfg.with_meta}|{pipeline}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    safe = "".join(c if c.isalnum() else "_" for c in "+".join(spec.splits))
    return os.path.join(cache_dir, f"fundus_{safe}_{cfg.image_size}px_{digest}")


def _parsed_records(records: tf.data.Dataset, mode: str, keep=None) -> tf.data.Dataset:
    """Serialized examples -> dicts of scalar features, only those ``keep`` accepts.

    ``keep(parsed) -> bool tensor`` works on a record or (vectorised) on a batch."""
    if mode == "vectorized":
        def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
            p = schema.parse_batch(serialized)
            if keep is not None:
                m = keep(p)
                p = {k: tf.boolean_mask(v, m) for k, v in p.items()}
            return p
        return (records.batch(PARSE_BATCH)
                .map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
                .unbatch())
    parsed = records.map(schema.parse_single, num_parallel_calls=AUTOTUNE, deterministic=True)
    return parsed.filter(keep) if keep is not None else parsed


def _gather_batches(elements: tf.data.Dataset, records: int, batch: int,
                    seed: int | None, finish) -> tf.data.Dataset:
    """Training batches from a split held in memory as one array per field.

    ``elements`` (the ``records`` decoded records of the split, an exact count) are
    batched into ONE element and cached in memory: the first epoch decodes, later epochs
    read the cache without copying it. Each epoch (each new iterator) draws one seed
    from ``Dataset.random`` (re-randomised per iteration, reproducible from ``seed``),
    permutes ``range(records)`` with ``stateless_shuffle`` and yields
    ``floor(records / batch)`` batches, each ``tf.gather`` of ``batch`` indices: a
    full-split shuffle without an element-wise shuffle buffer, one copy per image and
    epoch. ``finish`` (batch dict -> the dataset's element) runs in the same parallel
    map as the gather. A split whose size differs from ``records`` fails (once, when it is
    cached) with an error naming the count.

    The graph is flat on purpose: ``zip(cached split repeated, index batches)`` with no
    per-epoch ``flat_map``; instantiating a dataset-valued function every epoch made a
    1,472-image in-memory epoch ~100-118 ms against ~60-85 ms (BUILD_NOTES, session 3).
    Peak memory while the split is assembled: about twice the decoded split (the records
    and the array)."""
    n, steps = int(records), int(records) // batch

    def exact(split: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:  # once, when cached
        check = tf.debugging.assert_equal(
            tf.shape(split["sex"], out_type=tf.int64)[0], tf.constant(n, tf.int64),
            message=f"reader: split_stats counted {n} records but the shards hold a "
                    f"different number (a shard changed after the manifest was written?)")
        with tf.control_dependencies([check]):
            return {k: tf.identity(v) for k, v in split.items()}

    # batch(n): a split with more records gives a second, short element, fewer a short
    # first one; either fails ``exact`` instead of leaving records out or out of range
    whole = elements.batch(max(1, n)).map(exact).cache()

    def permuted(s: tf.Tensor) -> tf.Tensor:       # [steps, batch] int64 indices
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([s, tf.constant(0, tf.int64)]))
        return tf.reshape(perm[:steps * batch], [steps, batch])

    index_batches = (tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
                     .take(1).map(permuted).unbatch())

    def gather(split: dict[str, tf.Tensor], idx: tf.Tensor):
        return finish({k: tf.gather(v, idx) for k, v in split.items()})

    return (tf.data.Dataset.zip(whole.repeat(), index_batches)
            .map(gather, num_parallel_calls=AUTOTUNE, deterministic=False))


def make_dataset(data_dir: str, split: str | Sequence[str] | SplitSpec, training: bool,
                 cfg: ReadConfig = ReadConfig(), *, folds_include=None, folds_exclude=None,
                 input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The tf.data pipeline of one split (see the module docstring for the elements).

    Args:
      data_dir: a fundus-convert output directory (``manifest.json`` + shards).
      split: ``"train"``, ``"val"``, ``"test"``, a list of them, or a :class:`SplitSpec`
        (e.g. from :func:`training_split`).
      training: shuffle, reshuffle every epoch, drop the last partial batch,
        non-deterministic order; else one deterministic pass.
      cfg: :class:`ReadConfig`; ``cfg.batch_size`` is the global batch.
      folds_include / folds_exclude: keep only records whose fold is / is not in these.
      input_context: from ``strategy.distribute_datasets_from_function``: the batch
        becomes the per-replica batch and this pipeline reads its share (by file when
        there are at least as many shards as input pipelines, else by record).
    Raises:
      FileNotFoundError / KeyError / ValueError naming the manifest, split or flag.
    """
    spec = as_spec(split, folds_include, folds_exclude)
    man = manifest_lib.load(data_dir)
    _check_spec(data_dir, man, spec)
    normal_only = normal_filter(spec, cfg.normal_only)
    by_normal, by_fold = _needs_filter(man, spec, cfg.normal_only)
    stats = split_stats(data_dir, spec, normal_only=cfg.normal_only)
    if stats.records == 0:
        raise ValueError(f"{manifest_lib.manifest_path(data_dir)}: split {spec.name} has no "
                         f"records after filtering (normal_only={normal_only})")
    files = shard_files(data_dir, man, spec)

    batch = cfg.batch_size
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(cfg.batch_size)
        pipelines, pipeline_id = (input_context.num_input_pipelines,
                                  input_context.input_pipeline_id)
    by_file = pipelines > 1 and len(files) >= pipelines
    by_record = pipelines > 1 and not by_file
    records_here = -(-stats.records // pipelines)      # upper bound of this pipeline's share

    # 1. shard files -> records
    file_ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
    if by_file:
        file_ds = file_ds.shard(pipelines, pipeline_id)
    n_files = -(-len(files) // pipelines) if by_file else len(files)
    cycle = max(1, min(n_files, cfg.cycle_length or 16))
    if training:
        file_ds = file_ds.shuffle(max(1, n_files), seed=cfg.seed,
                                  reshuffle_each_iteration=True)
    records = file_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=cycle, block_length=1, num_parallel_calls=AUTOTUNE,
        # sharding by position needs the same record order in every input pipeline
        deterministic=not training or by_record)
    if by_record:
        records = records.shard(pipelines, pipeline_id)

    # 2. parse, filter before decode, decode + resize in parallel
    keep = ((lambda p: keep_mask(p, spec, by_normal, by_fold))
            if by_normal or by_fold else None)
    parsed = _parsed_records(records, cfg.parse, keep)
    size = int(cfg.image_size)
    with_meta = cfg.with_meta

    def decode(p: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {"image": schema.decode_image(p["image/encoded"], size),
               "sex": tf.cast(p["patient/sex"], tf.float32),
               "age": tf.cast(p["patient/age"], tf.int32)}
        if with_meta:
            out.update(patient_id=p["patient/id"], eye=p["eye"],
                       filename=p["image/filename"])
        return out

    ds = parsed.map(decode, num_parallel_calls=AUTOTUNE, deterministic=not training)

    # the elements' final form (applied per batch)
    w_female, w_male = stats.class_weights()
    with_age, sample_weights = cfg.with_age, cfg.sample_weights

    def outputs(b: dict[str, tf.Tensor]):
        y = b["sex"]
        labels = {"sex": y, "age": tf.cast(b["age"], tf.float32)} if with_age else y
        out = [b["image"], labels]
        if sample_weights:
            w = tf.where(y > 0.5, tf.constant(w_male, tf.float32),
                         tf.constant(w_female, tf.float32))
            if with_age:
                w = {"sex": w, "age": tf.cast(b["age"] >= 0, tf.float32)}
            out.append(w)
        if with_meta:
            out.append({"patient_id": b["patient_id"], "eye": b["eye"],
                        "filename": b["filename"], "age": b["age"]})
        return tuple(out)

    # 3. cache decoded uint8
    need = decoded_bytes(records_here, size)
    budget = int(cfg.cache_budget_gb * _GB)
    in_memory = need <= budget
    if training and in_memory and cfg.shuffle_buffer is None and pipelines == 1:
        # 4a. the whole split in memory: reshuffled batches gathered from one array (its
        # exact size is known only for one input pipeline: several shard before filtering)
        ds = _gather_batches(ds, stats.records, batch, cfg.seed, outputs)
    else:
        if in_memory:
            ds = ds.cache()
        elif cfg.cache_dir:
            ds = ds.cache(_cache_file(cfg.cache_dir, data_dir, spec, cfg, normal_only,
                                      (pipelines, pipeline_id)))
        # 4b. shuffle after the cache, every epoch
        if training:
            if cfg.shuffle_buffer is not None:
                buffer = cfg.shuffle_buffer
            else:
                fit = budget // max(1, decoded_bytes(1, size))
                buffer = max(batch * 4, min(records_here, fit))
            ds = ds.shuffle(max(1, min(buffer, records_here)), seed=cfg.seed,
                            reshuffle_each_iteration=True)
        ds = ds.batch(batch, drop_remainder=training, num_parallel_calls=AUTOTUNE,
                      deterministic=not training)
        ds = ds.map(outputs, num_parallel_calls=AUTOTUNE, deterministic=not training)

    # 5. prefetch
    ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(_options(training, input_context is not None))


def distributed_dataset(strategy: tf.distribute.Strategy, data_dir: str, split,
                        training: bool, cfg: ReadConfig = ReadConfig(), **kw: Any):
    """``strategy.distribute_datasets_from_function`` over :func:`make_dataset`: every
    input pipeline reads its share and batches ``cfg.batch_size / replicas`` images."""
    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(data_dir, split, training, cfg, input_context=input_context, **kw)
    return strategy.distribute_datasets_from_function(dataset_fn)
