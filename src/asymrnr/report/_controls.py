"""Plotly controls that need no custom JavaScript (they work in the page, a notebook, or write_html).

Two independent switches over one set of traces (e.g. feature x metric) are a small state machine in
plain layout data: each button of one menu shows the traces of (its value, the other menu's current
value) and, in the same click, rewrites the ``visible`` list stored in every button of the other menu
so that those buttons keep the value just chosen. Only visibility lists are stored (a few bytes per
trace), never data.

A switch over data that would multiply the number of traces (the step groups of the norm figure) is a
slider that animates to precomputed frames: frames change trace data only, visibility is left to the
menu, so the two controls are orthogonal.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

BUTTON_STYLE = dict(bgcolor="#f4f4f4", bordercolor="#bbb", borderwidth=1, font=dict(size=12), pad=dict(r=4, t=2, b=2))


def _vis(keys: Sequence[Any], wanted: tuple) -> list[bool]:
    """``visible`` list: traces keyed ``None`` are always shown, others when their key equals ``wanted``."""
    out = []
    for key in keys:
        if key is None:
            out.append(True)
        else:
            key = key if isinstance(key, tuple) else (key,)
            out.append(key == wanted)
    return out


def linked_menus(
    keys: Sequence[Hashable | tuple | None],
    menus: Sequence[dict],
    initial: tuple,
    *,
    first_index: int = 0,
) -> list[dict]:
    """Updatemenus that select the visible traces by one (1 menu) or two (2 menus) independent values.

    Args:
        keys: per trace, the tuple of value indices (one per menu) it belongs to, or ``None`` (always on).
        menus: per menu: ``labels`` (button labels) and layout options (``x``, ``y``, ``type``, ...).
        initial: the value index each menu starts on (must match the traces' initial ``visible``).
        first_index: index of the first of these menus in ``layout.updatemenus`` (other menus before).
    """
    if len(menus) not in (1, 2) or len(initial) != len(menus):
        raise ValueError("linked_menus supports one or two menus, with one initial index per menu")
    keys = [None if k is None else (k if isinstance(k, tuple) else (k,)) for k in keys]
    out = []
    if len(menus) == 1:
        spec = dict(menus[0])
        labels = spec.pop("labels")
        buttons = [dict(label=lab, method="restyle", args=[{"visible": _vis(keys, (i,))}]) for i, lab in enumerate(labels)]
        out.append(_menu(spec, buttons, initial[0]))
        return out
    spec0, spec1 = dict(menus[0]), dict(menus[1])
    labels0, labels1 = spec0.pop("labels"), spec1.pop("labels")
    idx0, idx1 = first_index, first_index + 1
    buttons0 = [
        dict(
            label=lab,
            method="update",
            args=[
                {"visible": _vis(keys, (i, initial[1]))},
                {f"updatemenus[{idx1}].buttons[{j}].args[0].visible": _vis(keys, (i, j)) for j in range(len(labels1))},
            ],
        )
        for i, lab in enumerate(labels0)
    ]
    buttons1 = [
        dict(
            label=lab,
            method="update",
            args=[
                {"visible": _vis(keys, (initial[0], j))},
                {f"updatemenus[{idx0}].buttons[{i}].args[0].visible": _vis(keys, (i, j)) for i in range(len(labels0))},
            ],
        )
        for j, lab in enumerate(labels1)
    ]
    out.append(_menu(spec0, buttons0, initial[0]))
    out.append(_menu(spec1, buttons1, initial[1]))
    return out


def initial_visibility(keys: Sequence[Any], initial: tuple) -> list[bool]:
    return _vis([None if k is None else (k if isinstance(k, tuple) else (k,)) for k in keys], tuple(initial))


def _menu(spec: dict, buttons: list, active: int) -> dict:
    menu = dict(
        type="buttons",
        direction="right",
        showactive=True,
        active=int(active),
        buttons=buttons,
        xanchor="left",
        yanchor="bottom",
        **BUTTON_STYLE,
    )
    menu.update(spec)
    return menu


def animate_args(frame_name: str) -> list:
    """``args`` of a slider step that jumps to a frame at once (no transition)."""
    return [[frame_name], dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))]
