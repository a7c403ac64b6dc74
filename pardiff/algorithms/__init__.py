"""SPMD algorithms: each is a function of one rank's Context, written against Comm."""
from .iia_fit import fit_iia
from .paradigms import paradigms
from .parasolver import parasolver
from .se2p import se2p
from .sequential import sequential

ALGORITHMS = {"sequential": sequential, "se2p": se2p, "parasolver": parasolver, "paradigms": paradigms,
              "fit-iia": fit_iia}
