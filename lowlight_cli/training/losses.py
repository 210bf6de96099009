"""The papers' losses as pure functions. Inputs are ``(B, 3, H, W)`` RGB in ``[0, 1]`` unless
stated otherwise; every function returns a scalar tensor.
"""

from __future__ import annotations

# ---- symnet (owned by the symnet/nrl author) -------------------------------------------------

# ---- nrl ---------------------------------------------------------------------------------------

# ---- frlie (owned by the frlie/neid author) ----------------------------------------------------

# ---- neid --------------------------------------------------------------------------------------
