"""Export a trained model (or an ensemble) as SavedModel and TFLite, then check each copy.

Outputs under ``output``::

    saved_model/           SavedModel; signature ``serve``: uint8 [None, S, S, 3] -> P(male)
    model_float32.tflite   TFLite, float32 weights and compute
    model_float16.tflite   TFLite, float16 weights (dequantised to float32 on CPU)
    model_int8.tflite      TFLite, int8 weights and activations where supported
                           (calibrated on a representative set from the train split)
    export.json            sizes, the check images, and max |p_export - p_keras| per format

Every export is run on the same check images as the Keras model. SavedModel and TFLite
float32 must agree within :data:`FLOAT32_TOLERANCE`; float16 and int8 report their
difference (quantisation error). An ensemble is exported as one model whose output is the
mean of its members' (members must share the input size).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from model import io as model_io
from pipeline import fileio, reader
from pipeline import progress as progress_lib

FLOAT32_TOLERANCE = 1e-4
TFLITE_KINDS = ("float32", "float16", "int8")
JOB = "fundus-export"   # the progress lines' label


def combined_model(members: Sequence[model_io.Member]):
    """One Keras model: uint8 ``[B, S, S, 3]`` -> ``[B, 1]`` mean of the members."""
    if len(members) == 1:
        return members[0].model
    sizes = model_io.image_sizes(members)
    if len(sizes) > 1:
        raise ValueError(f"--model: an exported ensemble needs one input size, members have "
                         f"{sizes}; export members separately")
    s = sizes[0]
    inp = keras.Input((s, s, 3), dtype="uint8", name="image")
    outs = []
    for i, m in enumerate(members):
        wrapped = keras.Model(m.model.inputs[0], m.model.outputs[0], name=f"member_{i}")
        outs.append(keras.layers.Reshape((1,), name=f"p_{i}")(wrapped(inp)))
    out = keras.layers.Average(name="sex")(outs)
    return keras.Model(inp, out, name="ensemble")


def keras_probabilities(model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """float32 ``[N]`` from the Keras model (reference for the checks)."""
    return model_io.predict_arrays(model, images, batch_size=batch_size)


def export_saved_model(model, path: str) -> str:
    """``model.export(path)`` (SavedModel, endpoint ``serve``); replaces ``path`` atomically."""
    return fileio.write_dir_atomic(
        path, lambda tmp: model.export(tmp, format="tf_saved_model", verbose=False))


def saved_model_probabilities(path: str, images: np.ndarray) -> np.ndarray:
    """float32 ``[N]`` from the SavedModel's ``serve`` endpoint on uint8 ``images``."""
    loaded = tf.saved_model.load(path)
    out = loaded.serve(tf.constant(images))
    return np.asarray(out, np.float32).reshape(-1)


def tflite_bytes(saved_model_dir: str, kind: str,
                 representative: Callable[[], Iterable[list[np.ndarray]]] | None = None) -> bytes:
    """Convert a SavedModel to TFLite: ``float32``, ``float16`` or ``int8``.

    ``int8`` needs ``representative`` (a generator function of ``[uint8 [1, S, S, 3]]``);
    input and output keep their dtypes (uint8 image in, float32 probability out).
    """
    if kind not in TFLITE_KINDS:
        raise ValueError(f"--tflite: unknown kind {kind!r}; use {', '.join(TFLITE_KINDS)}")
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if kind == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if representative is None:
            raise ValueError("--tflite=int8 needs a representative set: pass --data")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
    return conv.convert()


def tflite_probabilities(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Run a TFLite model one image at a time -> float32 ``[N]``."""
    with warnings.catch_warnings():   # "tf.lite.Interpreter is deprecated": see BUILD_NOTES
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        interp = tf.lite.Interpreter(model_content=model_bytes)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    probs = []
    for img in images:
        x = img[np.newaxis].astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out.get("quantization") and out["quantization"][0] and out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        probs.append(float(np.reshape(y, -1)[0]))
    return np.asarray(probs, np.float32)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def export(members: Sequence[model_io.Member], output: str, check_images: np.ndarray, *,
           tflite: Sequence[str] = ("float32", "float16"), check_source: str = "",
           representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Export, check and describe: returns (and writes) the ``export.json`` dict.

    ``check_images``: uint8 ``[N, S, S, 3]`` at the model's input size. ``ok`` is False
    when SavedModel or TFLite float32 differ from Keras by more than 1e-4. ``progress``:
    a :class:`pipeline.progress.Progress` over the exports (the SavedModel, each TFLite
    kind) on stderr, one line as each starts (the job's ``--noprogress`` turns it off).
    """
    for k in tflite:
        if k not in TFLITE_KINDS:
            raise ValueError(f"--tflite: unknown kind {k!r}; use {', '.join(TFLITE_KINDS)}")
    if "int8" in tflite and representative is None:
        raise ValueError("--tflite=int8 needs a representative set from the train split: "
                         "pass --data")
    os.makedirs(output, exist_ok=True)
    bar = progress_lib.Progress(JOB, "exports checked", 1 + len(tflite), progress)
    bar.update(0, force=True, note="Keras reference and SavedModel")
    model = combined_model(members)
    ref = keras_probabilities(model, check_images)
    report: dict[str, Any] = {
        "models": [m.path for m in members], "image_size": members[0].image_size,
        "input": "uint8 [batch, size, size, 3], RGB 0..255 (the stored fundus crop resized)",
        "output": "float32 probability that the patient is male",
        "check_images": int(len(check_images)), "check_source": check_source,
        "keras_probabilities": [round(float(v), 6) for v in ref],
        "tolerance_float32": FLOAT32_TOLERANCE,
    }
    sm_path = export_saved_model(model, os.path.join(output, "saved_model"))
    sm_diff = _diff(saved_model_probabilities(sm_path, check_images), ref)
    report["saved_model"] = {"path": "saved_model", "max_abs_diff": sm_diff,
                             "ok": sm_diff <= FLOAT32_TOLERANCE}
    report["tflite"] = {}
    for j, kind in enumerate(tflite):
        bar.update(1 + j, force=True, note=f"TFLite {kind}")
        data = tflite_bytes(sm_path, kind, representative)
        name = f"model_{kind}.tflite"
        fileio.write_bytes(os.path.join(output, name), data)
        diff = _diff(tflite_probabilities(data, check_images), ref)
        entry = {"path": name, "bytes": len(data), "max_abs_diff": diff}
        if kind == "float32":
            entry["ok"] = diff <= FLOAT32_TOLERANCE
        report["tflite"][kind] = entry
    bar.update(1 + len(tflite), note="done")
    bar.close()
    report["ok"] = bool(report["saved_model"]["ok"] and all(
        e.get("ok", True) for e in report["tflite"].values()))
    fileio.write_json(os.path.join(output, "export.json"), report, sort_keys=False)
    return report


def split_images(data_dir: str, split: str, image_size: int, n: int) -> np.ndarray:
    """The first ``n`` (normal) images of a split, uint8 ``[n', S, S, 3]`` via the reader."""
    cfg = reader.ReadConfig(image_size=image_size, batch_size=min(max(1, n), 64),
                            cache_budget_gb=0.0)
    out: list[np.ndarray] = []
    for images, _ in reader.make_dataset(data_dir, split, False, cfg):
        out.append(images.numpy())
        if sum(len(o) for o in out) >= n:
            break
    return np.concatenate(out)[:n] if out else np.zeros([0, image_size, image_size, 3], np.uint8)


def representative_from(images: np.ndarray) -> Callable[[], Iterable[list[np.ndarray]]]:
    """A TFLite representative-dataset function over uint8 images, one at a time."""
    def gen():
        for img in images:
            yield [img[np.newaxis].astype(np.uint8)]
    return gen
