"""Grad-CAM maps: which parts of the fundus (disc, vessels, macula) drive the prediction.

For the classifier (``image -> ... -> backbone -> pool -> dropout -> sex``) the feature
map is the output of the top-level ``backbone`` layer (the last convolutional block of the
wrapped ``keras.applications`` network, e.g. 12 x 12 x 1280 for MobileNetV2 at 384 px).
Other models: the last top-level layer with a 4-D output. The model is split there into
``features = F(image)`` and ``p = H(features)``; for the predicted class (male when
p >= 0.5) Grad-CAM weights each channel by the spatial mean of d logit / d features
(the logit's sign flipped for female), sums, keeps the positive part, upsamples
bilinearly to the image and scales each map to [0, 1] by its maximum. An ensemble's map
is the mean of its members' maps.

With multi-depth features (``--feature_layers``) the backbone has several outputs; the
head is split off all of them and the map is taken on the deepest (the smallest spatial
size; of equal sizes the last listed). With
``--orient=disc_left`` the model sees mirrored photos; their maps are mirrored back so
they overlay the photo as given.
"""
from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from model import eval_figures, evaluation, orient, prediction
from model import io as model_io
from pipeline import fileio, reader, schema
from pipeline import progress as progress_lib

BACKBONE_LAYER = "backbone"
EPS = 1e-7
JOB = "fundus-explain"   # the progress lines' label


def _outer_outputs(layer) -> list:
    """The symbolic outputs of ``layer``'s (first) call in its parent graph."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    outs = nodes[0].output_tensors if nodes else layer.output
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def _outer_output(layer):
    """The (last) symbolic output of ``layer``'s first call: the deepest feature map of a
    multi-output backbone."""
    return _outer_outputs(layer)[-1]


def feature_layer(model):
    """The layer whose 4-D output Grad-CAM uses (``backbone`` if present)."""
    names = [layer.name for layer in model.layers]
    if BACKBONE_LAYER in names:
        layer = model.get_layer(BACKBONE_LAYER)
        if len(_outer_output(layer).shape) == 4:
            return layer
    for layer in reversed(model.layers):
        try:
            out = _outer_output(layer)
        except (AttributeError, ValueError, IndexError):
            continue
        shape = getattr(out, "shape", None)
        if shape is not None and len(shape) == 4 and layer is not model.layers[0]:
            return layer
    raise ValueError(f"model {model.name} has no layer with a 4-D (image-like) output for "
                     "Grad-CAM")


def split_model(model):
    """``(features_model, head_model, layer_name)`` split at :func:`feature_layer`."""
    layer = feature_layer(model)
    feats = _outer_outputs(layer) if layer.name == BACKBONE_LAYER else [_outer_output(layer)]
    return (keras.Model(model.inputs[0], feats, name="gradcam_features"),
            keras.Model(feats, model.outputs[0], name="gradcam_head"), layer.name)


def grad_cam(model, images: np.ndarray, batch_size: int = 16
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """Grad-CAM of one model on uint8 ``[N, S, S, 3]``.

    Returns ``(maps float32 [N, S, S] in [0, 1], probabilities float32 [N], layer name)``.
    A map is all zero only when no positive evidence exists for the predicted class.
    """
    feat_model, head, name = split_model(model)
    size = images.shape[1:3]
    mirrored = "orient" in [layer.name for layer in model.layers]
    areas = [int(t.shape[1] or 0) * int(t.shape[2] or 0) for t in feat_model.outputs]
    deepest = min(range(len(areas)), key=lambda i: (areas[i], -i))

    @tf.function(reduce_retracing=True)
    def one_batch(x):
        fs = feat_model(x, training=False)
        fs = list(fs) if isinstance(fs, (list, tuple)) else [fs]
        with tf.GradientTape() as tape:
            tape.watch(fs[deepest])
            out = head(fs if len(fs) > 1 else fs[0], training=False)
            p = tf.reshape(tf.cast(out, tf.float32), [-1])
            q = tf.clip_by_value(p, EPS, 1.0 - EPS)
            logit = tf.math.log(q) - tf.math.log1p(-q)
            target = tf.where(p >= 0.5, logit, -logit)
        g = tf.cast(tape.gradient(target, fs[deepest]), tf.float32)
        f = tf.cast(fs[deepest], tf.float32)
        w = tf.reduce_mean(g, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(w * f, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, size, method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        if mirrored:                     # back to the photo's own frame
            cam = tf.where(orient.disc_on_right(x)[:, None, None],
                           tf.reverse(cam, axis=[2]), cam)
        return cam, p

    maps, probs = [], []
    for i in range(0, len(images), batch_size):
        cam, p = one_batch(tf.constant(images[i:i + batch_size]))
        maps.append(cam.numpy())
        probs.append(p.numpy())
    return (np.concatenate(maps).astype(np.float32), np.concatenate(probs).astype(np.float32),
            name)


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, 3]`` like the reader (bilinear, antialiased, rounded)."""
    if images.shape[1] == size:
        return images
    out = tf.image.resize(images, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()


def ensemble_grad_cam(members: Sequence[model_io.Member], images: np.ndarray,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean Grad-CAM and mean probability over members; images at the display size.
    ``progress``: a :class:`pipeline.progress.Progress` over the members on stderr."""
    size = images.shape[1]
    maps, probs, layers = [], [], []
    bar = progress_lib.Progress(f"{JOB} Grad-CAM of {len(images)} images", "models",
                                len(members), progress)
    for j, m in enumerate(members):
        bar.update(j, note=f"{evaluation.member_name(m)}, {m.image_size} px")
        cam, p, name = grad_cam(m.model, resize_uint8(images, m.image_size))
        if cam.shape[1] != size:
            cam = resize_maps(cam, size)
        maps.append(cam)
        probs.append(p)
        layers.append(name)
        bar.update(j + 1, note="")
    bar.close()
    return np.mean(maps, axis=0), model_io.ensemble_mean(probs), layers


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of float maps ``[N, H, W]`` to ``[N, size, size]``."""
    return tf.image.resize(maps[..., None], [size, size], method="bilinear")[..., 0].numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 ``[S, S, 3]``: the fundus with the jet-coloured map blended at ``alpha``
    (weighted by the map, so cold regions show the photo)."""
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    a = alpha * (0.3 + 0.7 * np.clip(cam, 0.0, 1.0))[..., None]
    out = (1.0 - a) * (image.astype(np.float32) / 255.0) + a * heat
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def grid_png(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: str,
             title: str = "", pairs_per_row: int = 2) -> str:
    """A grid of (photo, Grad-CAM overlay) pairs with a colour bar -> PNG ``path``."""
    n = len(images)
    rows = max(1, -(-n // pairs_per_row))
    cols = 2 * pairs_per_row
    fig = Figure(figsize=(2.6 * cols, 2.9 * rows + 0.6), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, pairs_per_row)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.imshow(images[i])
        a.set_title(titles[i], fontsize=7)
        b.imshow(overlay(images[i], maps[i]))
        b.set_title("Grad-CAM", fontsize=7)
    fig.suptitle(title or "Grad-CAM: regions that raise the predicted class", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    cax = fig.add_axes((0.91, 0.15, 0.015, 0.7))
    fig.colorbar(ScalarMappable(cmap="jet", norm=Normalize(0, 1)), cax=cax,
                 label="relative importance")
    return eval_figures.save_png(fig, path)


def most_confident(probabilities: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` most confident predictions: half most male, half most female
    (more of one side when the other runs out), most confident first."""
    p = np.asarray(probabilities, np.float64)
    order_m = [int(i) for i in np.argsort(-p, kind="mergesort") if p[i] >= 0.5]
    order_f = [int(i) for i in np.argsort(p, kind="mergesort") if p[i] < 0.5]
    n = min(n, p.size)
    k_m = min(len(order_m), max(n - len(order_f), (n + 1) // 2))
    chosen = order_m[:k_m] + order_f[:n - k_m]
    return np.asarray(chosen, np.int64)


# ----------------------------------------------------------------------------- inputs

def split_images(data_dir: str, split: str, image_size: int, filenames: Sequence[str],
                 progress: bool = False) -> dict[str, tuple[np.ndarray, float, str]]:
    """``{filename: (uint8 [S, S, 3], label, patient_id)}`` of the named records of a split
    (read until all are found). ``progress``: a progress line over the records read."""
    want = set(filenames)
    found: dict[str, tuple[np.ndarray, float, str]] = {}
    cfg = reader.ReadConfig(image_size=image_size, batch_size=32, cache_budget_gb=0.0,
                            with_meta=True)
    total = reader.count_records(data_dir, split, normal_only=cfg.normal_only) if progress \
        else 0
    bar = progress_lib.Progress(f"{JOB} finding {len(want)} images in {split}", "images",
                                total, progress)
    read = 0
    for images, labels, meta in reader.make_dataset(data_dir, split, False, cfg):
        names = [v.decode() for v in meta["filename"].numpy()]
        for j, name in enumerate(names):
            if name in want and name not in found:
                found[name] = (images[j].numpy(), float(labels[j]),
                               meta["patient_id"][j].numpy().decode())
        read += len(names)
        bar.update(read, found=len(found))
        if len(found) == len(want):
            break
    bar.close()
    return found


def explain(members: Sequence[model_io.Member], output: str, *, data_dir: str | None = None,
            split: str = "test", n: int = 8, files: Sequence[str] = (),
            batch_size: int = 32, stored=None, progress: bool = True) -> dict:
    """Grad-CAM grid for chosen ``files`` (record file names of ``split``, or photo paths)
    or the ``n`` most confident images of ``split``. Writes ``gradcam_grid.png``,
    ``overlays/*.png``, ``explain.json`` and ``tensorboard/`` under ``output``; returns
    the explain.json dict. Photo paths go through :mod:`model.prediction` (``stored``:
    its :class:`StoredFormat`, resolved from the models when None). ``progress``:
    progress lines on stderr for the prediction of the split, the search for the chosen
    records and the Grad-CAM of each model (the job's ``--noprogress`` turns them off)."""
    size = max(m.image_size for m in members)
    items: list[dict] = []
    images: list[np.ndarray] = []
    problems: list[dict] = []
    photos = [f for f in files if os.path.isfile(f)]
    names = [f for f in files if not os.path.isfile(f)]
    if photos:
        fmt = stored or prediction.stored_format(members)
        for f in photos:
            jpeg, err = prediction.prepare_one(f, fmt)
            if jpeg is None:
                problems.append({"file": f, "error": err})
                continue
            images.append(schema.decode_image(jpeg, size).numpy())
            items.append({"file": f, "label": None, "patient": None})
    if names or not files:
        if not data_dir:
            raise ValueError("--data is needed to explain images of a split"
                             + (f" (not files on disk: {', '.join(names)})" if names else ""))
        if not names:
            frame = evaluation.predict_split(members, data_dir, split, batch_size=batch_size,
                                             progress=progress, label=JOB)
            names = list(frame["file"].iloc[most_confident(frame["probability"].to_numpy(), n)])
        found = split_images(data_dir, split, size, names, progress)
        for f in names:
            if f not in found:
                problems.append({"file": f, "error": f"not a file and not in split {split!r}"})
                continue
            img, label, patient = found[f]
            images.append(img)
            items.append({"file": f, "label": "male" if label >= 0.5 else "female",
                          "patient": patient})
    if not images:
        raise ValueError("nothing to explain: " + "; ".join(
            f"{p['file']}: {p['error']}" for p in problems))
    batch = np.stack(images)
    maps, probs, layers = ensemble_grad_cam(members, batch, progress)
    os.makedirs(os.path.join(output, "overlays"), exist_ok=True)
    titles = []
    for it, p, cam, img in zip(items, probs, maps, batch):
        it["probability_male"] = round(float(p), 6)
        it["map_max"], it["map_mean"] = float(cam.max()), float(cam.mean())
        base = os.path.splitext(os.path.basename(it["file"]))[0]
        it["overlay"] = os.path.join("overlays", f"{base}.png")
        _save_png(os.path.join(output, it["overlay"]), overlay(img, cam))
        truth = f", true {it['label']}" if it["label"] else ""
        titles.append(f"{os.path.basename(it['file'])}\nP(male) {float(p):.2f}{truth}")
    grid = grid_png(batch, maps, titles, os.path.join(output, "gradcam_grid.png"),
                    f"Grad-CAM ({layers[0]} layer"
                    + (f", mean of {len(members)} models" if len(members) > 1 else "")
                    + "): red = raises the predicted sex")
    _tensorboard(os.path.join(output, "tensorboard"), grid,
                 np.stack([overlay(i, c) for i, c in zip(batch, maps)]))
    fmaps = [list(split_model(m.model)[0].outputs[0].shape[1:3]) for m in members]
    report = {"models": [m.path for m in members], "layer": layers, "feature_map": fmaps,
              "image_size": size,
              "split": split if data_dir else None, "images": items, "problems": problems,
              "grid": "gradcam_grid.png", "tensorboard": "tensorboard"}
    fileio.write_json(os.path.join(output, "explain.json"), report, sort_keys=False,
                      allow_nan=False)
    return report


def _save_png(path: str, array: np.ndarray) -> None:
    fileio.write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _tensorboard(logdir: str, grid_path: str, overlays: np.ndarray) -> None:
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        with open(grid_path, "rb") as f:
            grid = tf.io.decode_png(f.read(), channels=3)
        tf.summary.image("grad_cam/grid", grid[tf.newaxis], step=0)
        tf.summary.image("grad_cam/overlays", overlays, step=0, max_outputs=len(overlays))
    writer.flush()
    writer.close()
