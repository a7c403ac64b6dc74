"""The MPI backend of Comm (mpi4py), and the launcher sanity check."""
from __future__ import annotations

import os

import numpy as np

from .base import Comm

# Variables a launcher sets to the number of ranks it started: MPICH/Hydra and
# Intel MPI (PMI_SIZE), Open MPI's mpirun (OMPI_COMM_WORLD_SIZE), Slurm's srun
# with PMI-2 (PMI_SIZE). If one of them says N > 1 but MPI_COMM_WORLD has one
# rank, mpi4py's MPI is not the launcher's MPI: each process would run alone.
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


class LauncherMismatch(RuntimeError):
    pass


def check_launcher(world_size: int, library_version: str, environ=os.environ) -> None:
    """Fail loudly when the launcher started N ranks but MPI sees a world of 1."""
    for var in LAUNCHER_SIZE_VARS:
        value = environ.get(var, "")
        if value.isdigit() and int(value) > 1 and world_size == 1:
            raise LauncherMismatch(
                f"the launcher started {value} ranks ({var}={value}) but MPI_COMM_WORLD has 1 rank: "
                f"mpi4py uses a different MPI than the mpiexec/mpirun/srun that launched it, so every "
                f"process would run alone. mpi4py's MPI is: {library_version.splitlines()[0]!r}. "
                f"Launch with that MPI's mpiexec (e.g. the one installed by `pip install mpich` beside "
                f"mpi4py), or rebuild mpi4py against the site MPI (docs/hpc.md).")


def cuda_aware(MPI, environ=os.environ) -> bool:
    """Whether this MPI reads and writes GPU memory: PARDIFF_CUDA_AWARE_MPI=1/0 if set (for
    MPIs that do not report it, e.g. Cray MPICH with MPICH_GPU_SUPPORT_ENABLED=1), else what
    mpi4py reports (MPIX_Query_cuda_support, Open MPI and MPICH 4), else no."""
    value = environ.get("PARDIFF_CUDA_AWARE_MPI", "").strip()
    if value in ("0", "1"):
        return value == "1"
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query else False
    except Exception:       # the extension is declared but not built into this MPI
        return False


class _Request:
    def __init__(self, request):
        self._request = request

    def wait(self):
        self._request.Wait()


class MPIComm(Comm):
    backend = "mpi"

    def __init__(self, mpi_comm=None, recorder=None):
        from mpi4py import MPI
        self._MPI = MPI
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        self._c = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        check_launcher(self._c.Get_size(), MPI.Get_library_version())
        super().__init__(self._c.Get_rank(), self._c.Get_size(), recorder)
        local = self._c.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.cuda_aware = cuda_aware(MPI)

    def share_staging(self, lane_bytes: int) -> None:
        """--staging shared: map the node's shared arena (comm/shared.py; collective on the node's
        ranks); GPU tensors to and from ranks of this node then cross through it."""
        from .shared import SharedStaging
        self.shared = SharedStaging(self._c, lane_bytes)
        self.staging = "shared"

    def close(self) -> None:
        if self.shared is not None:         # collective, like the arena's creation
            self.shared.close()
            self.shared = None

    def _send_bytes(self, buf, dest, tag):
        self._c.Send([buf, self._MPI.BYTE], dest=dest, tag=tag)

    def _isend_bytes(self, buf, dest, tag):
        return _Request(self._c.Isend([buf, self._MPI.BYTE], dest=dest, tag=tag))

    def _probe(self, source, tag):
        self._c.Probe(source=source, tag=tag)

    def _recv_bytes(self, buf, source, tag):
        status = self._MPI.Status()
        self._c.Recv([buf, self._MPI.BYTE], source=source, tag=tag, status=status)
        if status.Get_count(self._MPI.BYTE) != buf.nbytes:
            raise RuntimeError(f"rank {self.rank}: message from rank {source} (tag {tag}) has "
                               f"{status.Get_count(self._MPI.BYTE)} bytes, expected {buf.nbytes}")

    def _allreduce_array(self, arr: np.ndarray, op: str):
        self._c.Allreduce(self._MPI.IN_PLACE, arr, op=self._ops[op])

    def _bcast_bytes(self, buf, root):
        self._c.Bcast([buf, self._MPI.BYTE], root=root)

    def _barrier(self):
        self._c.Barrier()

    def allgather_object(self, obj):
        return self._c.allgather(obj)

    def abort(self, code: int = 1):
        self._c.Abort(code)

    @property
    def library_version(self) -> str:
        return self._MPI.Get_library_version().splitlines()[0].strip()
