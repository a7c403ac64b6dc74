"""An SPMD job whose rank 1 raises mid-run while rank 0 waits for it (run under mpiexec -n 2)."""
import sys

import torch

from pardiff.comm.mpi import MPIComm
from pardiff.config import RunConfig
from pardiff.runtime import run


def algorithm(ctx):
    comm = ctx.comm
    x = torch.ones(4)
    if comm.rank == 0:
        for _ in range(300):      # more rows than one flush holds: the first 256 reach the disk
            with ctx.host("denoise", "FAIL:0"):
                pass
        comm.send(x, 1, label="latent", line="FAIL:1")
        comm.recv(x, 1, label="latent", line="FAIL:3")     # never arrives: rank 1 fails first
    else:
        comm.recv(x, 0, label="latent", line="FAIL:1")
        with ctx.host("x_pred", "FAIL:2"):
            pass
        raise RuntimeError("injected failure on rank 1")
    return x


if __name__ == "__main__":
    cfg = RunConfig(algorithm="se2p", trace=sys.argv[1])
    sys.exit(run(cfg, MPIComm(), algorithm))
