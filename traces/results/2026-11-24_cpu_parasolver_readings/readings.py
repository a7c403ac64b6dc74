"""`pardiff` with one of ParaSolver's stopping-rule readings swapped for the other, to measure
what docs/algorithms/parasolver.md readings 6 and 7 cost. Not a pardiff option: the patch is
applied here, from outside, to this one process (1 rank).

    python3 readings.py pardiff|settled|authors-sigma run parasolver FLAGS...

- pardiff:        the shipped rules, unchanged;
- settled:        reading 7's other reading: a multistep sampler's point without history
                  (just made at Line 9) counts as settled, judged by its latent alone;
- authors-sigma:  reading 6's authors' code: the last subinterval's σ² is the DDPM variance
                  from t_{N-1} to timestep 0 (ᾱ_0), not to ᾱ = 1 (zero).
"""
import math
import sys
import types

from pardiff.algorithms import window
from pardiff.cli import main
from pardiff.solvers.posterior import posterior_variance

reading, args = sys.argv[1], sys.argv[2:]
if reading == "settled":
    # window.first_unconverged takes max(change, settled.get(i, math.inf)): a missing history as 0
    window.math = types.SimpleNamespace(ceil=math.ceil, sqrt=math.sqrt, isfinite=math.isfinite, inf=0.0)
elif reading == "authors-sigma":
    shipped_init = window.Window.__init__

    def init(self, ctx, solver, subintervals, size, lines):
        shipped_init(self, ctx, solver, subintervals, size, lines)
        a0 = float(solver.schedule.alpha_bar(0))
        self.var[-2] = self.var[-1] = float(posterior_variance(solver.alpha_bars[(self.N - 1) * self.L], a0))
    window.Window.__init__ = init
elif reading != "pardiff":
    sys.exit(f"readings.py: unknown reading {reading!r} (pardiff | settled | authors-sigma)")
sys.exit(main(args))
