"""Text drawn as written: the report's labels carry class, run and folder names, which matplotlib would otherwise
read as mathtext (`$\\bad$` is an unknown symbol, and the picture fails) or, with usetex, as LaTeX."""

from __future__ import annotations

import functools

import matplotlib

LITERAL = {"text.parse_math": False, "text.usetex": False}


def literal_text(plot):
    """Run a plotting function (which builds and saves its figure) with every text it draws taken literally;
    matplotlib reads these settings when a text is made, tick labels included, which happens while saving."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(LITERAL):
            return plot(*args, **kwargs)

    return wrapper
