"""The experiments' optional packages (``pip install laaf_kernels[experiments]``).

The library needs torch alone. The experiments also plot (matplotlib), and the
autoencoder reads scikit-learn's digits; :func:`require` checks for them before a
run starts, so that a missing package is a clear error, not a crash after an
hour of training. Progress bars use tqdm when it is there, and nothing otherwise.
"""
from __future__ import annotations

import importlib.util
import sys

EXTRA = "pip install 'laaf_kernels[experiments]'"


def require(*modules: str) -> None:
    """Raise ``SystemExit`` naming the missing modules (import names) and the extra."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"the experiments need {', '.join(missing)}, not installed here: {EXTRA}")


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, file=sys.stderr, **kwargs)``, or, without tqdm, the iterable itself
    (None: an object whose ``n`` / ``set_postfix`` / ``close`` do nothing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar() if iterable is None else iterable
    return tqdm(iterable, file=sys.stderr, **kwargs)


class _NoBar:
    n = 0

    def set_postfix(self, **_):
        pass

    def close(self):
        pass


def agg_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
