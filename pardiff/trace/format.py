"""The trace contract: one HDF5 file per run, one ``/ranks/<r>/events`` table per rank.

Root attributes: ``format``, ``version``, ``algorithm``, ``world_size``, ``params``
(JSON of the run configuration), ``clock`` (``wall`` or ``virtual``), ``backend``,
``versions`` (JSON), ``epoch_unix``. Each ``/ranks/<r>`` group carries ``host``,
``device``, ``clock_offset_s`` and ``clock_rtt_s`` (how its clock was aligned to rank 0's).
traces/SCHEMA.md documents every field; this module is the one place that defines them.
"""
import numpy as np

FORMAT = "pardiff-trace"
VERSION = 1

KINDS = ("compute", "host", "send", "recv", "collective", "wait")

EVENT_DTYPE = np.dtype([
    ("kind", "S12"),      # compute | host | send | recv | collective | wait (a non-blocking send's completion)
    ("label", "S24"),     # what ran or moved: eps, x_pred, latent, seed, drift, ...
    ("line", "S24"),      # pseudocode line, e.g. SE2P-A1:9
    ("step", "<i4"),      # outer loop index k, or -1
    ("iter", "<i4"),      # parallel iteration, or -1
    ("t", "<i4"),         # timestep of a model evaluation (the largest if several), or -1
    ("t_min", "<i4"),     # smallest timestep in a batched evaluation (== t if one), or -1
    ("peer", "<i4"),      # the other rank of a message, or -1
    ("tag", "<i4"),       # MPI tag, or -1
    ("seq", "<i8"),       # n-th message between (sender, receiver, tag), or -1
    ("nbytes", "<i8"),    # bytes moved
    ("batch", "<i4"),     # model batch size of a compute event, or 0
    ("path", "S12"),      # how a message moved: host (CPU buffer), staged (GPU via host), ...
    ("t_start", "<f8"),   # seconds since the run's common epoch
    ("t_ready", "<f8"),   # recv: when the message was available (wait = t_ready - t_start); a GPU row
                          # timed with CUDA events: when the host issued it; else t_start
    ("t_end", "<f8"),
])

STRING_FIELDS = tuple(n for n in EVENT_DTYPE.names if EVENT_DTYPE[n].kind == "S")


def parts_dir(trace_path) -> str:
    """Where ranks write their own part files before rank 0 merges them."""
    return str(trace_path) + ".parts"
