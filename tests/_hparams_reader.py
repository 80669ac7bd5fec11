"""What TensorBoard's HParams plugin lists for a log root, read with TensorBoard's own
reader (``plugin_event_multiplexer``) and the plugin's request handlers."""
from __future__ import annotations

import numpy as np
from PIL import Image
from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import (api_pb2, backend_context, get_experiment,
                                         list_session_groups)


def hparams_sessions(logdir: str):
    """``(session groups, experiment)`` as the HParams dashboard gets them for
    ``tensorboard --logdir=logdir``."""
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    tb = base_plugin.TBContext(logdir=logdir, multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, logdir))
    ctx = backend_context.Context(tb)
    req = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000, allowed_statuses=[
        api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_RUNNING,
        api_pb2.STATUS_FAILURE])
    groups = list_session_groups.Handler(context.RequestContext(), ctx, "", req).run()
    exp = get_experiment.Handler(context.RequestContext(), ctx, "",
                                 api_pb2.GetExperimentRequest()).run()
    return list(groups.session_groups), exp


def metric_values(group, experiment) -> dict[str, float]:
    """A session group's metrics by their display names (``validation ROC AUC`` ...)."""
    names = {(m.name.group, m.name.tag): m.display_name or m.name.tag
             for m in experiment.metric_infos}
    return {names[(m.name.group, m.name.tag)]: m.value for m in group.metric_values
            if (m.name.group, m.name.tag) in names}


def tensorboard_images(run_dir: str) -> list[str]:
    """Image tags of one TensorBoard run dir (TensorBoard's ``event_accumulator``)."""
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return sorted(t for t in acc.Tags()["tensors"]
                  if acc.SummaryMetadata(t).plugin_data.plugin_name == "images")


# matplotlib's default colour cycle: the data of every plot is drawn in these
DATA_COLOURS = {"C0": (31, 119, 180), "C1": (255, 127, 14), "C2": (44, 160, 44),
                "C3": (214, 39, 40)}


def assert_nontrivial_png(path: str, min_width: int = 600, min_height: int = 300,
                          data: tuple[str, ...] = ("C0",), min_data_pixels: int = 40) -> None:
    """``path`` is a PNG at least ``min_width`` x ``min_height`` px with at least two
    colours in bulk (each over 1% of the pixels), no colour over 97% of them, and data
    drawn: at least ``min_data_pixels`` pixels of each colour in ``data`` (matplotlib's
    ``C0``... within a distance of 40 in RGB), which a plot of an empty history, fold list
    or trial table (axes, grid and labels only) does not have."""
    with Image.open(path) as img:
        assert img.format == "PNG", path
        assert img.width >= min_width and img.height >= min_height, (path, img.size)
        rgb = np.asarray(img.convert("RGB"), dtype=np.int32)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
    n = sum(c for c, _ in colours)
    bulk = [c for c, _ in colours if c > 0.01 * n]
    assert len(bulk) >= 2 and max(bulk) < 0.97 * n, (path, sorted(bulk)[-3:], n)
    for name in data:
        near = np.abs(rgb - np.array(DATA_COLOURS[name])).sum(axis=-1) <= 40
        assert int(near.sum()) >= min_data_pixels, (path, name, int(near.sum()))
