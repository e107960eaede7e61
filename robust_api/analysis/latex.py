"""LaTeX output of an analysis: the papers' certified-accuracy table as a booktabs ``tabular``.

Pure text functions, no LaTeX installation or pandas needed. Everything that comes from a
log (group names) goes through :func:`latex_escape`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

__all__ = ["latex_escape", "latex_table"]

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}",
    # the Greek letters and relations of group names, in math mode (pdflatex has no Unicode σ)
    "σ": r"$\sigma$", "α": r"$\alpha$", "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$",
}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that prints it: the ten special characters (``\\ & % $ # _ { }
    ~ ^``) and ``< > |`` escaped, σ, α, ≤, ≥, × in math mode, line breaks and other control
    characters turned into spaces. Other Unicode is kept (LaTeX reads UTF-8 since 2018)."""
    out = []
    for char in str(text):
        if char in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def _percent(value: Optional[float], digits: int) -> str:
    if value is None or math.isnan(value):
        return "--"
    return f"{100 * value:.{digits}f}"


def latex_table(names: Sequence[str], radii: Sequence[float], accuracies: Sequence[Sequence[Optional[float]]],
                acr: Optional[Sequence[Optional[float]]] = None, header: str = "Setting", digits: int = 1) -> str:
    """A booktabs ``tabular``: one row per group, certified accuracy (%) at each radius.

    Args:
        names: the row names (plain text; escaped here).
        radii: the radii of the accuracy columns.
        accuracies: per row, the accuracy (a fraction in [0, 1], NaN/None: no ground truth,
            printed ``--``) at each radius.
        acr: per row, the average certified radius, for a last "ACR" column (None: no column).
        header: the name of the first column (plain text; escaped here).
        digits: decimals of the percentages.

    Returns:
        The ``\\begin{tabular}`` ... ``\\end{tabular}`` text, ending with a newline, without
        a ``table`` float or caption (wrap it in your own); it needs ``\\usepackage{booktabs}``.
    """
    radii = list(radii)
    columns = "l" + "r" * len(radii) + ("r" if acr is not None else "")
    first = len(radii) + 1
    lines = [
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        rf" & \multicolumn{{{len(radii)}}}{{c}}{{Certified accuracy (\%) at radius $r$}}"
        + (" & " if acr is not None else "") + r" \\",
        rf"\cmidrule(lr){{2-{first}}}",
        " & ".join([latex_escape(header)] + [f"${r:g}$" for r in radii] + (["ACR"] if acr is not None else []))
        + r" \\",
        r"\midrule",
    ]
    for index, (name, values) in enumerate(zip(names, accuracies)):
        cells = [latex_escape(name)] + [_percent(value, digits) for value in values]
        if acr is not None:
            value = acr[index]
            cells.append("--" if value is None or math.isnan(value) else f"{value:.3f}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
