"""fundus-convert: ODIR-5K annotations + photos -> sharded TFRecords + manifest.json.

    fundus-convert --annotations=ODIR/full_df.csv --images=ODIR/preprocessed_images \\
        --output=data/odir512
    fundus-convert --verify=data/odir512       # re-hash every shard against the manifest

Exit status: 0 when converted or up to date; 2 for bad flags, unreadable annotations, a
refused output directory, or an output directory another conversion is writing (its lock:
the message names the dir and that run's pid) -- the message names the flag or file and
the fix; 1 when nothing was converted, or with ``--strict`` when any input was skipped
(the output is still written and lists why), or for a failure during the conversion (a
full disk: the finished shards stay and the same command resumes).
``--verify=DIR`` (no other flag needed) re-hashes every shard of DIR and checks its size
and record count against ``manifest.json``, one line per shard: exit 0 when all match, 1
when any does not (each mismatch named by shard), 2 when DIR has no manifest or a
conversion is writing it.
``--bench_bound`` also times the bare decode + crop + resize + encode of the same photos
on all workers (before and after the conversion) and prints the ratio.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import os

from absl import app, flags

from pipeline import bench, fileio
from pipeline import lock as lock_lib
from pipeline import manifest as manifest_lib
from pipeline import writer
from pipeline.annotations import AnnotationError

FLAGS = flags.FLAGS
flags.DEFINE_list("annotations", None, "Annotation files (csv/xlsx: per-patient ODIR-5K, "
                  "full_df.csv, OIA-ODIR workbooks) or {split}/{sex}/ folder trees, "
                  "comma-separated; format detected per file.")
flags.DEFINE_list("images", [], "Image folders: one for all annotations, or one per "
                  "annotation in the same order (a folder tree defaults to itself).")
flags.DEFINE_string("output", None, "Output directory (shards + manifest.json).")
flags.DEFINE_integer("image_size", 512, "Stored square size, pixels (>= 32).")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored crops, 1..100.")
flags.DEFINE_string("split", "0.7,0.15,0.15", "train,val,test patient fractions (zeros "
                    "allowed); a split given by the source (OIA-ODIR, folder tree) wins.")
flags.DEFINE_integer("seed", 0, "Seed of the splits, folds and record order.")
flags.DEFINE_integer("folds", 0, "K >= 2: cross-validation folds over train+val "
                     "patients; 0: none.")
flags.DEFINE_enum("selection", "normal", ["normal", "normal_or_quality", "all"],
                  "Which eyes: keywords exactly 'normal fundus'; plus image-quality "
                  "notes; or every eye (records carry normal=0/1).")
flags.DEFINE_list("num_shards", None, "Shards per split: N for every split or "
                  "train,val,test; default automatic (~150 MB each, >= 8 for train).")
flags.DEFINE_integer("workers", None, "Processes preparing photos (default: all cores).")
flags.DEFINE_bool("strict", False, "Exit 1 when any input was skipped.")
flags.DEFINE_bool("overwrite", False, "Replace an output directory made from other "
                  "inputs or flags (only the converter's files are deleted).")
flags.DEFINE_bool("progress", True, "Progress line on stderr.")
flags.DEFINE_string("verify", None, "Only check the converted dir DIR: re-hash every shard "
                    "and compare its sha256, size and record count with manifest.json "
                    "(exit 1 on any mismatch); no other flag needed.")
flags.DEFINE_bool("bench_bound", False, "Also time the bare fundus preparation of the "
                  "same photos (the conversion's bound) and print the ratio.")


def _num_shards(values: list[str] | None):
    if not values:
        return None
    try:
        counts = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--num_shards={','.join(values)}: integers expected") from None
    if len(counts) not in (1, 3):
        raise app.UsageError("--num_shards: one count, or three (train,val,test)")
    return counts[0] if len(counts) == 1 else tuple(counts)


def summary_table(manifest: dict) -> str:
    """Plain-text table of a manifest's splits."""
    head = f"{'split':<6} {'images':>7} {'patients':>8} {'male':>6} {'female':>6} " \
           f"{'normal':>6} {'skipped':>7} {'shards':>6}"
    lines = [head, "-" * len(head)]
    tot = dict.fromkeys(("images", "patients", "male", "female", "normal_images",
                         "skipped", "shards"), 0)
    for split, s in manifest["splits"].items():
        row = {**s, "shards": len(s["shards"]), "skipped": s.get("skipped", 0)}
        for k in tot:
            tot[k] += row[k]
        lines.append(f"{split:<6} {row['images']:>7} {row['patients']:>8} {row['male']:>6} "
                     f"{row['female']:>6} {row['normal_images']:>6} {row['skipped']:>7} "
                     f"{row['shards']:>6}")
    lines.append(f"{'total':<6} {tot['images']:>7} {tot['patients']:>8} {tot['male']:>6} "
                 f"{tot['female']:>6} {tot['normal_images']:>6} {tot['skipped']:>7} "
                 f"{tot['shards']:>6}")
    return "\n".join(lines)


def report(cfg: writer.ConvertConfig, result: writer.Result) -> None:
    """Print the summary table, the status line and the first skipped inputs."""
    manifest = result.manifest
    print(summary_table(manifest))
    skipped = manifest["skipped"]
    images = sum(s["images"] for s in manifest["splits"].values())
    if result.status == "up to date":
        print(f"{cfg.output}: up to date ({images} images); nothing written")
    else:
        rate = result.processed / max(result.seconds, 1e-9)
        print(f"{cfg.output}: {result.status}: {images} images, {len(skipped)} skipped; "
              f"{result.processed} photos in {result.seconds:.1f} s = {rate:.1f} photos/s "
              f"({cfg.workers or os.cpu_count()} workers)")
        print("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.phases.items()))
    for s in skipped[:20]:
        print(f"  skipped {s['file']} (patient {s['patient_id']} {s['eye']}): {s['reason']}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (manifest.json lists all)")


def verify(data_dir: str) -> int:
    """``--verify=DIR``: one line per shard, a summary; RunError when any mismatches."""
    with _common.checking_inputs():
        manifest = manifest_lib.load(data_dir)
        who = lock_lib.holder(data_dir)
        if who is not None:
            raise _common.InputError(f"--verify={data_dir} is being written by another run "
                                     f"({who or 'pid unknown'}); verify once it finishes")
    bad = []
    n = 0
    for report in manifest_lib.verify_shards(data_dir, None, manifest):
        n += 1
        state = "ok " if report.ok else "BAD"
        detail = "; ".join(report.problems) if report.problems else \
            f"{report.records} records"
        print(f"{state} {report.split:<5} {report.path}: {detail}", flush=True)
        if not report.ok:
            bad.append(report)
    if bad:
        raise _common.RunError(
            f"--verify={data_dir}: {len(bad)} of {n} shards do not match "
            f"{manifest_lib.MANIFEST_NAME} ({', '.join(r.path for r in bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}); {manifest_lib.fix_hint(data_dir, False)}")
    print(f"{data_dir}: all {n} shards match {manifest_lib.MANIFEST_NAME} "
          f"(sha256, size, record count)")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.verify:
        if FLAGS.annotations or FLAGS.output:
            raise app.UsageError("--verify checks a converted dir on its own; drop "
                                 "--annotations/--output (or --verify)")
        return verify(FLAGS.verify)
    if not FLAGS.annotations:
        raise app.UsageError("--annotations is required: annotation files or folder trees")
    if not FLAGS.output:
        raise app.UsageError("--output is required: the output directory")
    files: list[str] = []
    with _common.checking_inputs():
        cfg = writer.ConvertConfig(
            annotations=FLAGS.annotations, images=FLAGS.images, output=FLAGS.output,
            image_size=FLAGS.image_size, jpeg_quality=FLAGS.jpeg_quality, split=FLAGS.split,
            seed=FLAGS.seed, folds=FLAGS.folds, selection=FLAGS.selection,
            num_shards=_num_shards(FLAGS.num_shards), workers=FLAGS.workers,
            strict=FLAGS.strict, overwrite=FLAGS.overwrite, progress=FLAGS.progress)
        if FLAGS.bench_bound:
            files = list(writer.load_table(cfg)[0]["path"])
    bound_before = None
    if FLAGS.bench_bound:
        bound_before = bench.bench_bound(files, cfg.image_size, cfg.jpeg_quality, cfg.workers)
    # ConvertError / AnnotationError (bad flags, annotations, a refused output dir) and
    # LockedError (another conversion writes --output): exit 2
    try:
        result = writer.convert_with_status(cfg)
    except Exception as e:
        if fileio.out_of_space(e):
            raise _common.RunError(
                f"--output={cfg.output}: out of disk space ({type(e).__name__}: "
                f"{_common.message(e).strip().splitlines()[0]}); the shards finished so "
                f"far are kept: free space and rerun the same command to resume") from e
        raise
    report(cfg, result)
    if bound_before is not None and result.processed:
        after = bench.bench_bound(files, cfg.image_size, cfg.jpeg_quality, cfg.workers)
        bound = (bound_before["images_per_s"] + after["images_per_s"]) / 2
        rate = result.processed / max(result.seconds, 1e-9)
        print(f"bound: prepare_file alone on {cfg.workers or os.cpu_count()} workers: "
              f"{bound_before['images_per_s']:.1f} photos/s before, "
              f"{after['images_per_s']:.1f} after, mean {bound:.1f}; "
              f"conversion {rate:.1f} photos/s = {rate / bound:.2f} of the bound")
    if sum(s["images"] for s in result.manifest["splits"].values()) == 0:
        raise _common.RunError("nothing was converted (no eye selected, or every photo "
                               "skipped: manifest.json lists why)")
    skipped = result.manifest["skipped"]
    if cfg.strict and skipped:
        raise _common.RunError(f"--strict: {len(skipped)} input(s) skipped "
                               "(manifest.json lists why)")
    return 0


run = _common.entry(main, input_errors=(writer.ConvertError, AnnotationError,
                                        lock_lib.LockedError))

if __name__ == "__main__":
    run()
