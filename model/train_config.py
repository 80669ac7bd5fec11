"""The training configuration: every ``fundus-train`` flag, its check, and the flags.

:class:`TrainConfig` is the single description of a training run: ``fundus-train`` builds
it from its absl flags (:func:`define_flags`, :func:`config_from_flags`), the tuner writes
searched values into it, and ``model.training`` runs it. Each field is documented once, in
its ``help`` metadata; the flag help is that text. :meth:`TrainConfig.validate` is the
start-up check (every error names the flag and the fix) and
:meth:`TrainConfig.input_size` the one place the effective image size is resolved
(``--image_size=0``: the backbone's default). Nothing here trains, reads data or writes
files.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags

from model import augment, backbones, distribute, features, head_init, orient, precision
from model import prefix_cache
from model import io as model_io
from pipeline import manifest as manifest_lib

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "plateau")
SELECTIONS = ("normal", "all")
SELECTS = ("best", "last")                # which epoch's model is kept
STAGE_HEAD = "head"
STAGE_FINE_TUNE = "fine_tune"


class ConfigError(ValueError):
    """A bad flag or input found at start-up; the message names the flag and the fix."""


def _flag(default: Any, help_text: str, choices: tuple[str, ...] | None = None):
    """A :class:`TrainConfig` field: its default, its one description (the flag help)
    and, for enum flags, the allowed values."""
    return dataclasses.field(default=default,
                             metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every ``fundus-train`` flag (field names are the flag names; help in metadata).

    Learning rates are per step (optimizer units); sizes in pixels; epochs count passes
    over the training split; ``batch_size`` is the GLOBAL batch (split across replicas).
    """

    data: str = _flag(None, "Converted data dir (fundus-convert output with manifest.json).")
    model_dir: str = _flag(None, "Output dir: best.keras, saved_model/, history, run.json, "
                                 "logs/, backup/.")
    backbone: str = _flag("mobilenet_v2", "Backbone: one of " + ", ".join(backbones.BACKBONES)
                          + ".", tuple(sorted(backbones.BACKBONES)))
    weights: str = _flag("imagenet", "Backbone weights: imagenet, none (random init), or a "
                                     "PATH to a include_top=False .weights.h5 file.")
    image_size: int = _flag(0, "Training size, pixels (0: the backbone's default; >= its "
                               "minimum).")
    batch_size: int = _flag(32, "GLOBAL batch size (split across replicas).")
    epochs: int = _flag(20, "Total epochs (head warmup + fine-tuning). 0 with "
                            "--head_init=logistic: no gradient step, the fitted probe on the "
                            "frozen backbone is the model.")
    warmup_epochs: int = _flag(2, "Stage 1 epochs: the head only, backbone frozen.")
    fine_tune_fraction: float = _flag(0.3, "Stage 2: top fraction of backbone layers "
                                           "unfrozen (1.0 = all, 0 = head only for every "
                                           "epoch).")
    optimizer: str = _flag("adamw", "Optimizer: sgd (momentum, nesterov), adam, adamw, "
                                    "rmsprop.", OPTIMIZERS)
    learning_rate: float = _flag(1e-3, "Stage 1 (head) peak learning rate.")
    fine_tune_learning_rate: float = _flag(0.0, "Stage 2 peak learning rate (0: "
                                                "learning_rate * fine_tune_lr_scale).")
    fine_tune_lr_scale: float = _flag(0.1, "Stage 2 learning rate as a fraction of "
                                           "--learning_rate.")
    momentum: float = _flag(0.9, "Momentum of sgd and rmsprop.")
    nesterov: bool = _flag(True, "Nesterov momentum for sgd.")
    schedule: str = _flag("cosine", "Learning-rate schedule per stage: constant, cosine "
                                    "(linear warmup), step, plateau (reduce on a val AUC "
                                    "plateau).", SCHEDULES)
    lr_warmup_fraction: float = _flag(0.1, "cosine: linear warmup over this fraction of a "
                                           "stage's steps.")
    step_epochs: int = _flag(5, "step: epochs between learning-rate drops.")
    step_factor: float = _flag(0.1, "step / plateau: multiply the learning rate by this at "
                                    "a drop.")
    plateau_patience: int = _flag(2, "plateau: epochs without val AUC gain before a drop.")
    weight_decay: float = _flag(1e-4, "Decoupled weight decay (not on biases and "
                                      "normalisation scales).")
    label_smoothing: float = _flag(0.0, "Binary label smoothing, 0..0.5.")
    dropout: float = _flag(0.3, "Dropout before the output layer, 0..<1.")
    class_weights: bool = _flag(True, "Weight samples n / (2 n_class) from the training "
                                      "split's counts.")
    age_loss_weight: float = _flag(0.0, "> 0 adds the auxiliary age-regression head with "
                                        "this loss weight.")
    augment: Any = _flag(None, "model.augment.AugmentConfig (its --augment_* flags); None: "
                               "the defaults seeded by --seed.")
    precision: str = _flag("auto", "auto (mixed_float16 on GPU, else float32), float32, "
                                   "mixed_float16, mixed_bfloat16.", precision.CHOICES)
    strategy: str = _flag("auto", "auto (MirroredStrategy over >= 2 GPUs, else default "
                                  "device), mirrored, one_device, multi_worker (reads "
                                  "TF_CONFIG).", distribute.CHOICES)
    seed: int = _flag(42, "Seed of weights init, shuffling, augmentation and dropout.")
    patience: int = _flag(5, "Early stopping: stage-2 epochs without val AUC gain (0: off).")
    select: str = _flag("best", "Which model is kept: best (the epoch with the best "
                                "validation AUC; that AUC is then optimistic) or last (the "
                                "last epoch; nothing is selected on validation, use it for "
                                "honest --cv figures, with --patience=0).", SELECTS)
    swa_epochs: int = _flag(0, "K > 0: keep the mean of the trainable weights after each of "
                               "the last K epochs (weight averaging; exact with frozen "
                               "BatchNorm statistics); needs --select=last. 0: off.")
    tta: str = _flag("none", "Final validation prediction (run.json, cv.json): none, or flip "
                             "(mean of the image and its left-right mirror, as "
                             "fundus-evaluate --tta=flip).", model_io.TTAS)
    val_fold: int | None = _flag(None, "With --folds data: validate on fold i, train on the "
                                       "other folds.")
    cache_budget_gb: float = _flag(4.0, "Decoded images are cached in memory when they fit "
                                        "this budget, GiB.")
    cache_dir: str | None = _flag(None, "File cache for decoded images that exceed the "
                                        "budget (default: none).")
    train_selection: str = _flag("normal", "Training eyes: normal (keywords exactly normal "
                                           "fundus) or all written eyes; validation always "
                                           "uses normal eyes.", SELECTIONS)
    head_init: str = _flag("random", "Sex head start: random (Keras init) or logistic (an "
                                     "L2 logistic regression fitted on the frozen backbone's "
                                     "standardised pooled features of the training split, "
                                     "written into the head before the first stage).",
                           head_init.CHOICES)
    head_init_c: float = _flag(1e-3, "--head_init=logistic: inverse L2 strength C "
                                     "(scikit-learn convention; smaller is stronger).")
    orient: str = _flag("none", "disc_left: the model's first layer mirrors each photo so "
                                "its optic disc (the brightest spot) is on the left, as in a "
                                "left eye (model/orient.py); refuses --augment_flip, which "
                                "would undo it.", orient.CHOICES)
    feature_layers: str = _flag("", "Multi-depth features: backbone layers whose pooled "
                                    "outputs, concatenated and standardised, feed the head: "
                                    "'multi' (the backbone's preset), a comma list of layer "
                                    "names ('last' = the output), or empty (the last layer "
                                    "only). See model/features.py.")
    cache_frozen_prefix: bool = _flag(False, "Run the frozen backbone prefix once per image "
                                             "(and its mirror with --augment_flip), cache "
                                             "the activations in memory and train the top "
                                             "on them (all --cv folds share one cache); "
                                             "only the flip augmentation is possible.")
    prefix_cache_dir: str | None = _flag(None, "With --cache_frozen_prefix: keep the "
                                               "activations in this directory (one "
                                               "sub-directory per data/backbone/weights/size/"
                                               "cut/flip key) and reuse them in later jobs "
                                               "(default: memory only).")
    profile_batch: int = _flag(0, "TensorBoard profiler on this batch of the first epoch "
                                  "(0: off).")
    image_grid: int = _flag(16, "Training images (input and augmented) logged to "
                                "TensorBoard at start.")
    overwrite: bool = _flag(False, "Replace a finished or interrupted run in --model_dir.")
    verbose: int = _flag(2, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per "
                            "epoch.")

    # ----------------------------------------------------------------- derived values
    def fine_tune_lr(self) -> float:
        """Stage 2 peak learning rate (``--fine_tune_learning_rate`` or the scaled one)."""
        return self.fine_tune_learning_rate or self.learning_rate * self.fine_tune_lr_scale

    def metric_key(self, name: str, validation: bool = True) -> str:
        """Log key of a ``sex`` metric: ``val_auc`` (``val_sex_auc`` with the age head,
        whose model has two outputs); ``validation=False``: the training key."""
        key = f"sex_{name}" if self.age_loss_weight > 0 else name
        return f"val_{key}" if validation else key

    def input_size(self) -> int:
        """The effective training image size, pixels: ``--image_size``, or the backbone's
        default when 0 (raises ValueError below the backbone's minimum)."""
        return backbones.check_image_size(self.backbone, self.image_size)

    def augment_config(self) -> augment.AugmentConfig:
        """``--augment_*`` as given, or the defaults seeded by ``--seed``."""
        return self.augment or augment.AugmentConfig(seed=self.seed)

    def stages(self) -> list[tuple[str, int, int, float, float]]:
        """``[(name, first_epoch, end_epoch, fine_tune_fraction, peak_lr)]``."""
        out = []
        head_end = self.epochs if self.fine_tune_fraction == 0 else min(
            self.warmup_epochs, self.epochs)
        if head_end > 0:
            out.append((STAGE_HEAD, 0, head_end, 0.0, self.learning_rate))
        if self.epochs > head_end:
            out.append((STAGE_FINE_TUNE, head_end, self.epochs, self.fine_tune_fraction,
                        self.fine_tune_lr()))
        return out

    def validate(self) -> None:
        """Start-up checks; every error names the flag and the fix."""
        if not self.data:
            raise ValueError("--data is required: a fundus-convert output directory")
        if not self.model_dir:
            raise ValueError("--model_dir is required: where the model and logs go")
        if not os.path.exists(manifest_lib.manifest_path(self.data)):
            raise FileNotFoundError(
                f"--data={self.data}: no manifest.json there; point --data at a "
                f"fundus-convert output directory (run fundus-convert first)")
        backbones.get(self.backbone)
        self.input_size()
        features.parse_spec(self.feature_layers, self.backbone)
        backbones.normalise_weights(self.weights)
        precision.resolve_policy(self.precision)
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer={self.optimizer!r}: use one of "
                                           f"{', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule={self.schedule!r}: use one of "
                                         f"{', '.join(SCHEDULES)}"),
            (self.strategy in distribute.CHOICES, f"--strategy={self.strategy!r}: use one of "
                                                  f"{', '.join(distribute.CHOICES)}"),
            (self.train_selection in SELECTIONS, f"--train_selection={self.train_selection!r}:"
                                                 f" use one of {', '.join(SELECTIONS)}"),
            (self.select in SELECTS, f"--select={self.select}: one of {', '.join(SELECTS)}"),
            (self.tta in model_io.TTAS,
             f"--tta={self.tta}: one of {', '.join(model_io.TTAS)}"),
            (self.orient in orient.CHOICES,
             f"--orient={self.orient}: one of {', '.join(orient.CHOICES)}"),
            (self.orient == "none" or not self.augment_config().flip,
             f"--orient={self.orient} with --augment_flip: the random flip undoes the "
             f"orientation; pass --noaugment_flip"),
            (self.head_init in head_init.CHOICES,
             f"--head_init={self.head_init}: one of {', '.join(head_init.CHOICES)}"),
            (self.batch_size >= 1, f"--batch_size={self.batch_size}: must be >= 1"),
            (self.epochs >= 1 or (self.epochs == 0 and self.head_init == "logistic"),
             f"--epochs={self.epochs}: must be >= 1, or 0 with --head_init=logistic (the "
             f"fitted probe is the model)"),
            (self.epochs > 0 or self.age_loss_weight == 0,
             f"--epochs=0 with --age_loss_weight={self.age_loss_weight}: only the sex head is "
             f"fitted by the probe; pass --age_loss_weight=0"),
            (self.warmup_epochs >= 0, f"--warmup_epochs={self.warmup_epochs}: must be >= 0"),
            (0.0 <= self.fine_tune_fraction <= 1.0,
             f"--fine_tune_fraction={self.fine_tune_fraction}: must be in [0, 1]"),
            (self.learning_rate > 0, f"--learning_rate={self.learning_rate}: must be > 0"),
            (self.fine_tune_learning_rate >= 0,
             f"--fine_tune_learning_rate={self.fine_tune_learning_rate}: must be >= 0"),
            (0.0 <= self.lr_warmup_fraction < 1.0,
             f"--lr_warmup_fraction={self.lr_warmup_fraction}: must be in [0, 1)"),
            (self.step_epochs >= 1, f"--step_epochs={self.step_epochs}: must be >= 1"),
            (0.0 < self.step_factor < 1.0, f"--step_factor={self.step_factor}: in (0, 1)"),
            (self.weight_decay >= 0, f"--weight_decay={self.weight_decay}: must be >= 0"),
            (0.0 <= self.label_smoothing <= 0.5,
             f"--label_smoothing={self.label_smoothing}: must be in [0, 0.5]"),
            (0.0 <= self.dropout < 1.0, f"--dropout={self.dropout}: must be in [0, 1)"),
            (self.age_loss_weight >= 0, f"--age_loss_weight={self.age_loss_weight}: >= 0"),
            (self.patience >= 0, f"--patience={self.patience}: must be >= 0 (0: off)"),
            (self.swa_epochs >= 0, f"--swa_epochs={self.swa_epochs}: must be >= 0 (0: off)"),
            (self.swa_epochs == 0 or self.select == "last",
             f"--swa_epochs={self.swa_epochs} averages the last epochs' weights; it needs "
             f"--select=last (and --patience=0), not --select={self.select}"),
            (self.head_init_c > 0, f"--head_init_c={self.head_init_c}: must be > 0"),
            (self.select == "best" or self.patience == 0,
             f"--select=last with --patience={self.patience}: early stopping selects on "
             f"the validation split; pass --patience=0"),
            (self.cache_budget_gb >= 0, f"--cache_budget_gb={self.cache_budget_gb}: >= 0"),
            (self.val_fold is None or self.val_fold >= 0,
             f"--val_fold={self.val_fold}: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        last_stage = (self.stages() or [("none", 0, 0)])[-1]
        if self.swa_epochs > last_stage[2] - last_stage[1]:
            raise ValueError(f"--swa_epochs={self.swa_epochs}: the last stage "
                             f"({last_stage[0]}) has only {last_stage[2] - last_stage[1]} "
                             f"epochs; lower it or raise --epochs")
        if self.prefix_cache_dir and not self.cache_frozen_prefix:
            raise ValueError(f"--prefix_cache_dir={self.prefix_cache_dir} needs "
                             f"--cache_frozen_prefix")
        if self.cache_frozen_prefix:
            prefix_cache.check_augment(self.augment)
            if self.age_loss_weight > 0:
                raise ValueError("--cache_frozen_prefix does not support the age head; "
                                 "pass --age_loss_weight=0")

    def to_json(self) -> dict:
        """The config as JSON values (``augment`` as its dict)."""
        d = dataclasses.asdict(self)
        if self.augment is not None:
            d["augment"] = dataclasses.asdict(self.augment)
        return d


# =========================================================================== flags
def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Define the ``fundus-train`` absl flags: one per :class:`TrainConfig` field (help
    from its metadata), ``--cv``, and the ``--augment_*`` flags of :mod:`model.augment`."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    for f in dataclasses.fields(TrainConfig):
        if f.name == "augment" or f.name in fv:
            continue
        help_text, choices = f.metadata["help"], f.metadata.get("choices")
        default = f.default
        if choices:
            flags.DEFINE_enum(f.name, default, list(choices), help_text, flag_values=fv)
        elif isinstance(default, bool):
            flags.DEFINE_bool(f.name, default, help_text, flag_values=fv)
        elif f.name == "val_fold" or isinstance(default, int):
            flags.DEFINE_integer(f.name, default, help_text, flag_values=fv)
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, default, help_text, flag_values=fv)
        else:
            flags.DEFINE_string(f.name, default, help_text, flag_values=fv)
    if "cv" not in fv:
        flags.DEFINE_integer("cv", 0, "K >= 2: train every fold of --folds=K data into "
                             "model_dir/fold_i and write cv.json (0: one run).", flag_values=fv)
    augment.define_flags(fv)


def config_from_flags(flag_values: flags.FlagValues | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of the parsed flags (augmentation seeded by ``--seed``)."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    values = {f.name: getattr(fv, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name != "augment"}
    return TrainConfig(augment=augment.config_from_flags(fv, seed=fv.seed), **values)
