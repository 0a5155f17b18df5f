"""evaluate.py's plots: how they place what they draw."""

from __future__ import annotations


def test_pareto_labels_of_near_points_do_not_overlap():
    """Labels of points at nearly the same place go a line apart; a label with room stays where it was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evaluate_plots import _annotate_apart

    fig, ax = plt.subplots()
    ax.plot([0.0, 1.0], [0.0, 1.0], "o")
    _annotate_apart(ax, [("no_control", 0.5, 0.5), ("ppo_short_run", 0.52, 0.5), ("far", 0.0, 1.0)])
    offsets = {a.get_text(): a.xyann for a in ax.texts}
    assert offsets["no_control"] == (6, 6) and offsets["far"] == (6, 6)
    assert abs(offsets["ppo_short_run"][1] - 6) >= 8 * 1.6
    plt.close(fig)
