"""The report's figures (matplotlib, Agg): accuracy bars with 95% intervals, the Figure-6 curve, the modality
gap and the Figure-5 picture (PCA of image vs multilingual text features with kernel-density contours)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ACC = {"xllava_table2": ("acc_en", "acc_ko"), "lrm_table3": ("acc_en", "acc_non_en"),
       "lrm_fig5": ("acc_en", "acc_non_en")}


def _pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _err(m: dict) -> tuple[float, list[float]]:
    """(mean, [below, above]) of a mean_ci95 dict."""
    return m["mean"], [m["mean"] - m["ci95"][0], m["ci95"][1] - m["mean"]]


def bars(arms: dict, metrics: tuple[str, ...], baselines: dict | None, title: str, path: Path,
         ylabel: str = "accuracy (held-out)") -> Path:
    """Grouped bars per arm (one bar per metric) with 95% intervals; chance and text-only as lines."""
    plt = _pyplot()
    names = list(arms)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)) + 2.5, 4))
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        vals = [arms[a]["metrics"].get(m) for a in names]
        x = [i + j * width for i, v in enumerate(vals) if v]
        got = [_err(v) for v in vals if v]
        ax.bar(x, [g[0] for g in got], width, yerr=np.array([g[1] for g in got]).T if got else None, capsize=3, label=m)
    for key, style in (("chance", ":"), ("text_only", "--"), ("heldout_majority", "-.")):
        for j, m in enumerate(metrics):
            v = (baselines or {}).get(key, {}).get(m)
            if v is not None:
                ax.axhline(v, linestyle=style, color=f"C{j}", linewidth=0.8, label=f"{key} {m}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratio_curve(arms: dict, path: Path) -> Path:
    """Figure 6: English and non-English accuracy against the non-English/English volume ratio."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [float(a.rstrip("%")) for a in arms]
    for m in ("acc_en", "acc_non_en"):
        got = [arms[a]["metrics"].get(m) for a in arms]
        if not all(got):
            continue
        mean = np.array([g["mean"] for g in got])
        ax.plot(xs, mean, marker="o", label=m)
        ax.fill_between(xs, [g["ci95"][0] for g in got], [g["ci95"][1] for g in got], alpha=0.2)
    ax.set_xlabel("non-English volume, % of English")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_title("lrm_fig6 (miniature; mean and 95% t-interval over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kde_grid(points: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Gaussian kernel density of 2-D points on a mesh grid (Scott's bandwidth per axis)."""
    n = len(points)
    bw = points.std(axis=0) * n ** (-1 / 6) + 1e-9
    gx, gy = grid
    z = np.zeros_like(gx)
    for px, py in points:
        z += np.exp(-0.5 * (((gx - px) / bw[0]) ** 2 + ((gy - py) / bw[1]) ** 2))
    return z / (n * 2 * np.pi * bw[0] * bw[1])


def pca2(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of x."""
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def feature_picture(panels: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Figure 5: per arm, PCA of unit-normalised mean image features (red) and mean multilingual question
    features (blue, all languages) with kernel-density contours."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, f) in zip(axes[0], panels.items()):
        unit = lambda a: a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-9)  # noqa: E731
        image = unit(f["image"])
        text = unit(np.concatenate([v for k, v in f.items() if k.startswith("text_")]))
        xy = pca2(np.concatenate([image, text]))
        pts = {"image": (xy[:len(image)], "red"), "text": (xy[len(image):], "blue")}
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        pad = 0.1 * (hi - lo) + 1e-6
        grid = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 60), np.linspace(lo[1] - pad[1], hi[1] + pad[1], 60))
        for label, (p, color) in pts.items():
            ax.scatter(p[:, 0], p[:, 1], s=4, color=color, alpha=0.4, label=label)
            if len(p) > 2:
                ax.contour(grid[0], grid[1], kde_grid(p, grid), levels=4, colors=color, linewidths=0.8)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.suptitle("lrm_fig5: projected image features (red) vs multilingual text features (blue), PCA, seed 0",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def suite_plots(suite: str, arms: dict, details: dict, out: Path) -> list[Path]:
    """The figures of one suite, written to DIR/<suite>*.png."""
    baselines = details.get("baselines")
    title = f"{suite} (miniature; mean and 95% t-interval over seeds)"
    paths = []
    if suite in ACC:
        paths.append(bars(arms, ACC[suite], baselines, title, out / f"{suite}.png"))
    if suite == "lrm_fig6":
        paths.append(ratio_curve(arms, out / f"{suite}.png"))
    if suite == "lrm_fig5":
        paths.append(bars(arms, ("modality_gap",), None, "lrm_fig5: modality gap (lower = closer)", out / "lrm_fig5_gap.png"))
        panels = {}
        for arm, e in details.get("arms", {}).items():
            f = e["per_seed"][0].get("features") if e.get("per_seed") else None
            if f and Path(f).exists():
                panels[arm] = dict(np.load(f))
        if panels:
            paths.append(feature_picture(panels, out / "lrm_fig5_features.png"))
    return paths
