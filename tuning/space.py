"""Search spaces: which hyperparameters a sweep searches, over what ranges, and which it fixes.

A search space is a mapping ``name -> Param``. ``name`` is one of :data:`TUNABLES` (the
hyperparameters the :mod:`tuning.hypermodel` knows how to apply to the training job's
configs). A :class:`Param` is one of

* ``choice``: a list of values (strings, ints, floats or bools), sampled uniformly;
* ``float``: ``min..max``, ``linear`` or ``log`` sampling, optional ``step``;
* ``int``: ``min..max`` (inclusive), optional ``step``, ``linear`` or ``log`` sampling;
* ``fixed``: one value, applied to every trial and not searched.

Sources, later ones override earlier ones per name:

1. :data:`TUNABLES`' default ranges, used for a name listed in ``--search`` that has no
   range anywhere else;
2. a JSON search-space file (``--space=FILE``)::

       {"learning_rate": {"min": 1e-5, "max": 1e-3, "sampling": "log"},
        "optimizer":     {"choice": ["adam", "adamw", "sgd"]},
        "warmup_epochs": {"min": 0, "max": 3, "type": "int"},
        "dropout":       {"min": 0.2, "max": 0.6, "step": 0.1},
        "epochs":        12}

   A bare value (``"epochs": 12``) is a fixed override of a training flag. Keys starting
   with ``_`` are comments and ignored. YAML is not read: PyYAML is not a dependency of
   this project (not installed in the reference environment), so files are JSON only;
3. ``--range`` flags, one per name: ``learning_rate=1e-5..1e-3:log``,
   ``optimizer=adam|sgd``, ``warmup_epochs=0..3:int``, ``dropout=0.1..0.5:step=0.1``,
   ``label_smoothing=0.1`` (fixed).

``--search=a,b,c`` then chooses what is searched: names listed are searched (with the
range from 2./3., else the default of 1.), every other ranged name is *fixed* at the
training flag's value (its range is ignored, with a note). Without ``--search`` every
ranged name in the file and flags is searched. Fixed overrides (bare values) always
apply.

**The default space** (:data:`DEFAULT_SPACE`, :func:`default_space`): with no ``--space``,
``--range`` or ``--search`` at all, ``fundus-tune`` searches ``backbone``, ``optimizer``
(``adamw|adam|sgd``) and ``learning_rate`` (``1e-4..3e-3``, log), and says so in its first
line. The backbones offered are those whose weights can load here
(:func:`default_backbones`):

* ``--weights=imagenet``: the ImageNet backbones of ``TUNABLES["backbone"]`` whose
  ``include_top=False`` weights file is already in the Keras cache
  (``model.backbones.keras_models_dir``, file names ``backbones.IMAGENET_CACHE_FILES``): machines here
  have no internet, and a backbone that would have to download is never offered. None
  cached: a ``ValueError`` naming the fixes (exit 2);
* ``--weights=none``: every backbone of ``TUNABLES["backbone"]`` (random init always loads);
* ``--weights=PATH``: a ``.weights.h5`` file holds one architecture, so the backbone stays
  ``--backbone`` and only the optimizer and learning rate are searched.

With ``--image_size`` set, backbones whose minimum size is larger are left out (with a
note). A name of the default space whose flag is given on the command line (e.g.
``--backbone=resnet50``) is not searched: it keeps the flag's value. Parsing, validation
and file checks only; the Keras import comes with :mod:`model.backbones`, no model is built.

Over 500 lines (about 560) because the default space is a search space like the others and
is owned here, beside :class:`Param` / :class:`SearchSpace` it is made of; the parsing above
is about 400 lines, the default space the last 150.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Mapping

from model import backbones
from pipeline import fileio

KINDS = ("choice", "float", "int", "fixed")
SAMPLINGS = ("linear", "log")

Value = Any  # str | int | float | bool


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyperparameter's range (or fixed value).

    Attributes:
      name: hyperparameter name (a key of :data:`TUNABLES`, or a training flag when fixed).
      kind: ``choice`` | ``float`` | ``int`` | ``fixed``.
      values: the choices (``choice``) or a 1-tuple with the value (``fixed``).
      min, max: inclusive bounds (``float`` / ``int``).
      sampling: ``linear`` | ``log`` (``log`` needs ``min > 0``).
      step: grid step (``float``/``int``), or None for continuous / step 1.
      source: where the range came from (file path, ``--range``, ``default``), for messages.
    """

    name: str
    kind: str
    values: tuple = ()
    min: float | int | None = None
    max: float | int | None = None
    sampling: str = "linear"
    step: float | int | None = None
    source: str = ""

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    def describe(self) -> str:
        """Compact human text, also the ``--range`` syntax: ``1e-05..0.001:log``."""
        if self.kind == "fixed":
            return f"{self.values[0]!r} (fixed)"
        if self.kind == "choice":
            return "|".join(str(v) for v in self.values)
        text = f"{self.min}..{self.max}"
        if self.kind == "int":
            text += ":int"
        if self.sampling == "log":
            text += ":log"
        if self.step is not None:
            text += f":step={self.step}"
        return text

    def to_json(self) -> dict:
        """The JSON form :func:`param_from_json` reads back."""
        if self.kind == "fixed":
            return {"fixed": self.values[0]}
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out = {"min": self.min, "max": self.max, "type": self.kind}
        if self.sampling != "linear":
            out["sampling"] = self.sampling
        if self.step is not None:
            out["step"] = self.step
        return out


# The hyperparameters the HyperModel can search, with their value type and a default
# range used when ``--search`` names one without giving a range. Every name is the
# training job's flag of the same value (augmentation strengths are model.augment's
# ``--augment_<AugmentConfig field>`` flags); the HyperModel applies them to the configs.
TUNABLES: dict[str, Param] = {
    p.name: p for p in [
        Param("backbone", "choice", ("mobilenet_v2", "efficientnet_v2_s", "xception",
                                     "inception_v3", "resnet50", "convnext_tiny")),
        Param("optimizer", "choice", ("sgd", "adam", "adamw", "rmsprop")),
        Param("learning_rate", "float", min=1e-5, max=1e-2, sampling="log"),
        Param("schedule", "choice", ("cosine", "constant")),
        Param("warmup_epochs", "int", min=0, max=3),
        Param("fine_tune_fraction", "float", min=0.0, max=1.0, step=0.25),
        Param("dropout", "float", min=0.0, max=0.6, step=0.1),
        Param("weight_decay", "float", min=1e-6, max=1e-3, sampling="log"),
        Param("label_smoothing", "float", min=0.0, max=0.2, step=0.05),
        Param("image_size", "choice", (224, 299, 384, 512)),
        Param("batch_size", "choice", (16, 32, 64)),
        Param("augment_rotation_deg", "float", min=0.0, max=20.0, step=5.0),
        Param("augment_zoom", "float", min=0.0, max=0.2, step=0.05),
        Param("augment_translate", "float", min=0.0, max=0.1, step=0.05),
        Param("augment_brightness", "float", min=0.0, max=0.3, step=0.1),
        Param("augment_contrast", "float", min=0.0, max=0.3, step=0.1),
        Param("augment_saturation", "float", min=0.0, max=0.3, step=0.1),
        Param("augment_hue", "float", min=0.0, max=0.05, step=0.01),
    ]
}
for _p in TUNABLES.values():
    object.__setattr__(_p, "source", "default")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The resolved space: searched ranges plus fixed overrides.

    Attributes:
      searched: name -> Param of every searched hyperparameter (kind != fixed), in a
        stable order (the order of :data:`TUNABLES`, then others by name).
      fixed: name -> value of explicit fixed overrides (training flags set for every trial).
      notes: human-readable remarks (ranges ignored because not in ``--search`` ...).
    """

    searched: dict[str, Param]
    fixed: dict[str, Value]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"searched": {k: p.to_json() for k, p in self.searched.items()},
                "fixed": dict(self.fixed), "notes": list(self.notes)}


def _num(text: str, where: str) -> float | int:
    """Parse an int if it looks like one, else a float; errors name ``where``."""
    try:
        if text.strip().lstrip("+-").isdigit():
            return int(text)
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


def _scalar(text: str) -> Value:
    """A flag-text value: bool, int, float or string."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return _num(t, "")
    except ValueError:
        return t


def _validated(p: Param) -> Param:
    """Check a Param's consistency; the message names its source and name."""
    where = f"{p.source or 'search space'}: {p.name}"
    if p.kind not in KINDS:
        raise ValueError(f"{where}: unknown type {p.kind!r}; use one of {KINDS}")
    if p.kind == "choice":
        if not p.values:
            raise ValueError(f"{where}: empty choice list")
        if len(set(map(repr, p.values))) != len(p.values):
            raise ValueError(f"{where}: duplicate choices in {list(p.values)}")
        kinds = {type(v) for v in p.values}
        if not kinds <= {str, int, float, bool} or len(kinds - {int, float}) > 1 \
                or (kinds & {int, float} and kinds - {int, float}):
            raise ValueError(f"{where}: choices must all be strings, all numbers or all "
                             f"booleans, got {list(p.values)}")
        return p
    if p.kind == "fixed":
        if len(p.values) != 1:
            raise ValueError(f"{where}: a fixed value needs exactly one value")
        return p
    if p.min is None or p.max is None:
        raise ValueError(f"{where}: a {p.kind} range needs min and max")
    if not (math.isfinite(p.min) and math.isfinite(p.max)) or p.min > p.max:
        raise ValueError(f"{where}: need finite min <= max, got {p.min}..{p.max}")
    if p.sampling not in SAMPLINGS:
        raise ValueError(f"{where}: sampling must be one of {SAMPLINGS}, got {p.sampling!r}")
    if p.sampling == "log" and p.min <= 0:
        raise ValueError(f"{where}: log sampling needs min > 0, got {p.min}")
    if p.step is not None and (p.step <= 0 or p.sampling == "log" and p.kind == "float"):
        raise ValueError(f"{where}: step must be > 0 and is not allowed with float log "
                         f"sampling, got step={p.step}")
    if p.kind == "int":
        for v in (p.min, p.max) + ((p.step,) if p.step is not None else ()):
            if float(v) != int(v):
                raise ValueError(f"{where}: an int range needs integer bounds/step, got {v}")
        return dataclasses.replace(p, min=int(p.min), max=int(p.max),
                                   step=None if p.step is None else int(p.step))
    return dataclasses.replace(p, min=float(p.min), max=float(p.max),
                               step=None if p.step is None else float(p.step))


def param_from_json(name: str, spec: Any, source: str = "") -> Param:
    """One entry of a JSON search-space file -> :class:`Param`.

    ``spec`` is a bare value (fixed), ``{"fixed": v}``, ``{"choice": [...]}`` or
    ``{"min": a, "max": b, "type": "float"|"int", "sampling": "linear"|"log", "step": s}``
    (``type`` defaults to ``int`` when min, max (and step) are integers, else ``float``).
    """
    where = f"{source}: {name}"
    if not isinstance(spec, dict):
        if isinstance(spec, (list, tuple)):
            raise ValueError(f"{where}: a list is ambiguous; write {{\"choice\": [...]}}")
        return _validated(Param(name, "fixed", (spec,), source=source))
    keys = set(spec)
    if "fixed" in keys:
        if keys != {"fixed"}:
            raise ValueError(f"{where}: 'fixed' takes no other keys, got {sorted(keys)}")
        return _validated(Param(name, "fixed", (spec["fixed"],), source=source))
    if "choice" in keys:
        if keys - {"choice"}:
            raise ValueError(f"{where}: 'choice' takes no other keys, got {sorted(keys)}")
        if not isinstance(spec["choice"], list):
            raise ValueError(f"{where}: 'choice' must be a list")
        return _validated(Param(name, "choice", tuple(spec["choice"]), source=source))
    allowed = {"min", "max", "type", "sampling", "step"}
    if keys - allowed:
        raise ValueError(f"{where}: unknown keys {sorted(keys - allowed)}; a range takes "
                         f"{sorted(allowed)}, or use 'choice' / 'fixed'")
    if not {"min", "max"} <= keys:
        raise ValueError(f"{where}: a range needs both 'min' and 'max'")
    for k in ("min", "max", "step"):
        v = spec.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{where}: {k} must be a number, got {v!r}")
    kind = spec.get("type")
    if kind is None:
        nums = [spec["min"], spec["max"]] + ([spec["step"]] if "step" in spec else [])
        kind = "int" if all(isinstance(v, int) for v in nums) else "float"
    if kind not in ("int", "float"):
        raise ValueError(f"{where}: type must be 'int' or 'float', got {kind!r}")
    return _validated(Param(name, kind, (), spec["min"], spec["max"],
                            spec.get("sampling", "linear"), spec.get("step"), source=source))


def load_space_file(path: str) -> dict[str, Param]:
    """Read a JSON search-space file -> name -> Param (``_``-prefixed keys skipped).

    Errors name the file (and the entry). ``.yaml``/``.yml`` files are refused with a
    message: PyYAML is not installed with this project.
    """
    if path.lower().endswith((".yaml", ".yml")):
        raise ValueError(f"--space={path}: YAML search-space files are not supported "
                         "(PyYAML is not a dependency); write the same mapping as JSON")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--space={path}: no such file")
    try:
        data = fileio.read_json(path)
    except ValueError as e:
        raise ValueError(f"--space={e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"--space={path}: the top level must be an object name -> range")
    return {name: param_from_json(name, spec, path)
            for name, spec in data.items() if not name.startswith("_")}


def parse_range(text: str) -> Param:
    """One ``--range`` flag value -> Param.

    Syntax: ``name=a|b|c`` (choice), ``name=lo..hi[:int][:log][:step=S]`` (range),
    ``name=value`` (fixed). Choice items and fixed values are parsed as bool/int/float
    when they look like one, else kept as strings.
    """
    source = f"--range={text}"
    if "=" not in text:
        raise ValueError(f"{source}: expected NAME=RANGE, e.g. learning_rate=1e-5..1e-3:log")
    name, _, body = text.partition("=")
    name, body = name.strip(), body.strip()
    if not name or not body:
        raise ValueError(f"{source}: expected NAME=RANGE, e.g. learning_rate=1e-5..1e-3:log")
    if "|" in body:
        return _validated(Param(name, "choice", tuple(_scalar(v) for v in body.split("|")),
                                source=source))
    if ".." not in body:
        return _validated(Param(name, "fixed", (_scalar(body),), source=source))
    bounds, *opts = body.split(":")
    lo, _, hi = bounds.partition("..")
    kind, sampling, step = None, "linear", None
    for opt in opts:
        opt = opt.strip()
        if opt in ("int", "float"):
            kind = opt
        elif opt in SAMPLINGS:
            sampling = opt
        elif opt.startswith("step="):
            step = _num(opt[5:], source)
        else:
            raise ValueError(f"{source}: unknown option {opt!r}; use int, float, log, "
                             "linear or step=S")
    lo_v, hi_v = _num(lo, source), _num(hi, source)
    if kind is None:
        nums = [lo_v, hi_v] + ([step] if step is not None else [])
        kind = "int" if all(isinstance(v, int) for v in nums) else "float"
    return _validated(Param(name, kind, (), lo_v, hi_v, sampling, step, source=source))


def _order(names: Iterable[str]) -> list[str]:
    known = [n for n in TUNABLES if n in names]
    return known + sorted(n for n in names if n not in TUNABLES)


def resolve(file_params: Mapping[str, Param] | None = None,
            range_params: Iterable[Param] = (),
            search: Iterable[str] | None = None,
            tunables: Mapping[str, Param] = TUNABLES) -> SearchSpace:
    """Combine defaults, the file and ``--range`` flags under ``--search``.

    Args:
      file_params: from :func:`load_space_file` (or None).
      range_params: from :func:`parse_range`, later ones win.
      search: names to search (``--search``), or None for "every ranged name given".
      tunables: the searchable names and their default ranges.

    Raises ValueError for a searched name that is not tunable, a ``--search`` name with a
    fixed value, a duplicate ``--range`` name, or an empty result with ``--search``.
    """
    given: dict[str, Param] = dict(file_params or {})
    seen: set[str] = set()
    for p in range_params:
        if p.name in seen:
            raise ValueError(f"--range: {p.name} given twice")
        seen.add(p.name)
        given[p.name] = p
    fixed = {n: p.values[0] for n, p in given.items() if p.kind == "fixed"}
    ranged = {n: p for n, p in given.items() if p.kind != "fixed"}
    notes: list[str] = []
    if search is None:
        wanted = list(ranged)
    else:
        wanted = [s.strip() for s in search if s.strip()]
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"--search={','.join(wanted)}: a name is listed twice")
        for n in ranged:
            if n not in wanted:
                notes.append(f"{n}: range {ranged[n].describe()} from {ranged[n].source} "
                             "ignored (not in --search); fixed at the training flag value")
    searched: dict[str, Param] = {}
    for n in wanted:
        if n in fixed:
            raise ValueError(f"--search lists {n}, but {given[n].source} fixes it to "
                             f"{fixed[n]!r}; give it a range or drop it from --search")
        if n not in tunables:
            raise ValueError(f"{n}: not a searchable hyperparameter; use one of "
                             f"{', '.join(tunables)}")
        searched[n] = ranged.get(n, tunables[n])
        _check_type(searched[n], tunables[n])
    clash = sorted(set(fixed) & set(searched))
    assert not clash, clash
    return SearchSpace({n: searched[n] for n in _order(searched)}, fixed, tuple(notes))


def _check_type(p: Param, default: Param) -> None:
    """A range's values must have the default's value type (e.g. image_size: ints)."""
    def kind_of(q: Param) -> str:
        if q.kind in ("float", "int"):
            return "number"
        v = q.values[0]
        return "string" if isinstance(v, str) else "bool" if isinstance(v, bool) else "number"
    if kind_of(p) != kind_of(default):
        raise ValueError(f"{p.source}: {p.name} takes {kind_of(default)} values, got "
                         f"{p.describe()}")


def load(space_file: str | None, ranges: Iterable[str] = (),
         search: str | Iterable[str] | None = None) -> SearchSpace:
    """The flags' view: ``--space`` path, ``--range`` texts, ``--search`` (comma text or list)."""
    file_params = load_space_file(space_file) if space_file else None
    if isinstance(search, str):
        search = [s for s in search.split(",") if s.strip()] or None
    elif search is not None:
        search = list(search) or None
    return resolve(file_params, [parse_range(r) for r in ranges], search)


def declare(hp, p: Param):
    """Declare ``p`` on a ``keras_tuner.HyperParameters`` and return the trial's value."""
    if p.kind == "choice":
        return hp.Choice(p.name, list(p.values))
    if p.kind == "int":
        return hp.Int(p.name, p.min, p.max, step=p.step, sampling=p.sampling)
    if p.kind == "float":
        return hp.Float(p.name, p.min, p.max, step=p.step, sampling=p.sampling)
    raise ValueError(f"{p.name}: fixed values are not declared on the tuner")


# ------------------------------------------------------------------------ default space

DEFAULT_SOURCE = "default space"

#: What ``fundus-tune`` searches with no ``--space``, ``--range`` or ``--search`` (see the
#: module doc); ``backbone`` is narrowed by :func:`default_backbones` to what loads here.
DEFAULT_SPACE: dict[str, Param] = {
    p.name: p for p in [
        Param("backbone", "choice", TUNABLES["backbone"].values, source=DEFAULT_SOURCE),
        Param("optimizer", "choice", ("adamw", "adam", "sgd"), source=DEFAULT_SOURCE),
        Param("learning_rate", "float", min=1e-4, max=3e-3, sampling="log",
              source=DEFAULT_SOURCE),
    ]
}

def default_backbones(weights: str | None, image_size: int = 0,
                      backbone: str = "mobilenet_v2",
                      models_dir: str | None = None) -> tuple[tuple[str, ...], list[str]]:
    """The backbones the default space offers for ``--weights`` (see the module doc) and
    notes on what was left out and why.

    Args:
      weights: ``imagenet``, ``none`` or a ``.weights.h5`` PATH (as ``--weights``).
      image_size: ``--image_size`` px (0: each backbone's default size).
      backbone: ``--backbone``, the one backbone a PATH's weights are for.
      models_dir: the Keras cache folder (default ``model.backbones.keras_models_dir``).

    Raises ValueError when no backbone is left (no ImageNet weights cached, or
    ``image_size`` below every backbone's minimum), FileNotFoundError for a missing PATH.
    """
    w = backbones.normalise_weights(weights)
    if w not in (None, "imagenet"):
        return (backbone,), [f"--weights={weights} holds the weights of one architecture: "
                             f"backbone stays --backbone={backbone}"]
    notes: list[str] = []
    names = []
    for name in DEFAULT_SPACE["backbone"].values:
        smallest = backbones.get(name).min_size
        if image_size and image_size < smallest:
            notes.append(f"default space: {name} left out (--image_size={image_size} is "
                         f"below its minimum of {smallest} px)")
        else:
            names.append(name)
    if w == "imagenet":
        folder = models_dir or backbones.keras_models_dir()
        missing = [n for n in names
                   if not os.path.isfile(os.path.join(
                       folder, backbones.imagenet_cache_file(n, image_size)))]
        if missing:
            notes.append(f"default space: {', '.join(missing)} left out (--weights=imagenet: "
                         f"no ImageNet weights in the Keras cache {folder}; this machine "
                         f"is not assumed to reach the internet)")
        names = [n for n in names if n not in missing]
        if not names:
            raise ValueError(
                f"--weights=imagenet: no backbone of the default space has its ImageNet "
                f"weights in the Keras cache ({folder}), and without internet none can "
                f"download; pass --weights=PATH to a .weights.h5 file with its --backbone "
                f"(e.g. ../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5), "
                f"--weights=none, or name the backbones to search with "
                f"--range=backbone=a|b (downloads need internet)")
    elif not names:
        raise ValueError(f"--image_size={image_size} is below every default backbone's "
                         f"minimum; use a larger --image_size or --range=backbone=...")
    return tuple(names), notes


def default_space(weights: str | None, image_size: int = 0, backbone: str = "mobilenet_v2",
                  given: Mapping[str, Value] | None = None,
                  models_dir: str | None = None) -> SearchSpace:
    """The space ``fundus-tune`` searches with no ``--space``, ``--range`` or ``--search``.

    Args:
      weights, image_size, backbone, models_dir: as :func:`default_backbones`.
      given: name -> value of the training flags given on the command line; a name of
        :data:`DEFAULT_SPACE` among them is not searched (the flag's value stays).

    Returns a :class:`SearchSpace` whose notes say what was left out and what is fixed.
    A single backbone left is fixed (``fixed["backbone"]``) rather than searched.
    Raises ValueError when nothing is left to search (every name given on the command
    line) and as :func:`default_backbones`.
    """
    given = dict(given or {})
    searched: dict[str, Param] = {}
    fixed: dict[str, Value] = {}
    notes: list[str] = []
    for name, p in DEFAULT_SPACE.items():
        if name in given:
            notes.append(f"default space: {name} not searched (--{name}={given[name]} "
                         f"given)")
            continue
        if name == "backbone":
            names, why = default_backbones(weights, image_size, backbone, models_dir)
            notes += why
            if len(names) == 1:
                if names[0] != backbone:
                    fixed["backbone"] = names[0]
                if backbones.normalise_weights(weights) in (None, "imagenet"):
                    notes.append(f"default space: backbone fixed at {names[0]}, the only "
                                 f"one whose weights load here")
                continue
            p = dataclasses.replace(p, values=names)
        searched[name] = p
    if not searched:
        raise ValueError(f"no --space/--range/--search and {', '.join('--' + n for n in given)}"
                         f" given: nothing of the default space is left to search; give "
                         f"--space, --range or --search")
    return SearchSpace(searched, fixed, tuple(notes))


def default_line(space: SearchSpace, values: Mapping[str, Value]) -> str:
    """The first line of a sweep over :func:`default_space`: what is searched, for the
    names of :data:`DEFAULT_SPACE` that are not the value every trial uses, and which
    backbones ``--weights`` allows (``values``: name -> the trials' base value, i.e. the
    training flags, ``weights`` included)."""
    parts = []
    for name, p in space.searched.items():
        if p.kind == "choice":
            parts.append(f"{name}={{{', '.join(str(v) for v in p.values)}}}")
        else:
            log = ":log" if p.sampling == "log" else ""
            parts.append(f"{name}={p.min:g}..{p.max:g}{log}")
    fixed = [f"{n}={space.fixed.get(n, values.get(n))}" for n in DEFAULT_SPACE
             if n not in space.searched]
    w = backbones.normalise_weights(values.get("weights"))
    allowed = ("every backbone loads, from random init" if w is None else
               f"only backbones with ImageNet weights in {backbones.keras_models_dir()}"
               if w == "imagenet" else "one architecture's file: the backbone stays --backbone")
    return ("no --space/--range/--search: searching the default space " + ", ".join(parts)
            + (f"; fixed: {', '.join(fixed)}" if fixed else "")
            + f" (--weights={values.get('weights')}: {allowed})")
