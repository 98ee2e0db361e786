"""The peer comparison's numbers: medians over rounds, the issue's targets, the plot. Pure.

Each measured cell is one (server, protocol, concurrency) in one round: a
:class:`stn_deploy.load_client.LevelResult` as a dict plus ``server``, ``protocol`` and
``round``. Nothing here runs a server, so the tests check it without installing any peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["summarize", "targets", "TARGETS", "plot"]

# The targets: (name, ours protocol, peer, peer protocol, at least)
TARGETS = (
    ("ours JSON >= 2x MLServer JSON", "json", "mlserver", "json", 2.0),
    ("ours gRPC >= 2x MLServer gRPC", "grpc", "mlserver", "grpc", 2.0),
    ("ours binary >= 5x MLServer JSON", "binary", "mlserver", "json", 5.0),
)
P50_LIMIT_MS = 1.0


def _key(cell: dict) -> tuple[str, str, int]:
    return cell["server"], cell["protocol"], cell["concurrency"]


def summarize(cells: Iterable[dict]) -> dict[str, dict]:
    """Medians over rounds per ``"server/protocol/c"``, with the spread and every error."""
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault(_key(cell), []).append(cell)
    out = {}
    for (server, protocol, c), runs in sorted(groups.items()):

        def med(field: str, runs=runs) -> float | None:
            values = [r[field] for r in runs if r.get(field) is not None]
            return round(float(np.median(values)), 4) if values else None

        rates = [r["throughput"] for r in runs]
        out[f"{server}/{protocol}/c{c}"] = {
            "server": server, "protocol": protocol, "concurrency": c, "rounds": len(runs),
            "throughput": med("throughput"), "throughput_min": min(rates),
            "throughput_max": max(rates), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "server_cpu_ms_per_request": med("server_cpu_ms_per_request"),
            "client_cpu_ms_per_request": med("client_cpu_ms_per_request"),
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "mismatches": sum(r["mismatches"] for r in runs),
        }  # fmt: skip
    return out


def _per_round_ratio(cells: Sequence[dict], ours: tuple, peer: tuple) -> list[float]:
    by_round: dict[int, dict] = {}
    for cell in cells:
        by_round.setdefault(cell["round"], {})[_key(cell)] = cell["throughput"]
    ratios = []
    for values in by_round.values():
        if ours in values and peer in values and values[peer] > 0:
            ratios.append(round(values[ours] / values[peer], 3))
    return ratios


def targets(cells: Sequence[dict], summary: dict[str, dict], concurrency: int = 64,
            ours: str = "ours") -> dict:  # fmt: skip
    """Each target as measured (ratio of the medians, and per round), met or missed."""
    result = {"concurrency": concurrency, "ratios": [], "p50_at_c1": []}
    for name, protocol, peer, peer_protocol, at_least in TARGETS:
        mine = summary.get(f"{ours}/{protocol}/c{concurrency}")
        theirs = summary.get(f"{peer}/{peer_protocol}/c{concurrency}")
        entry = {"target": name, "at_least": at_least}
        if mine is None or theirs is None or not theirs["throughput"]:
            entry.update(measured=None, met=False, why="not measured in this run")
        else:
            ratio = mine["throughput"] / theirs["throughput"]
            entry.update(
                ours=mine["throughput"], peer=theirs["throughput"], measured=round(ratio, 2),
                per_round=_per_round_ratio(cells, (ours, protocol, concurrency),
                                           (peer, peer_protocol, concurrency)),
                met=bool(ratio >= at_least),
            )  # fmt: skip
        result["ratios"].append(entry)
    for row in summary.values():
        if row["server"] == ours and row["concurrency"] == 1:
            result["p50_at_c1"].append({
                "protocol": row["protocol"], "p50_ms": row["p50_ms"], "limit_ms": P50_LIMIT_MS,
                "met": bool(row["p50_ms"] is not None and row["p50_ms"] <= P50_LIMIT_MS),
            })  # fmt: skip
    bad = {k: row["errors"] + row["mismatches"] for k, row in summary.items()}
    result["errors_and_mismatches"] = {k: v for k, v in bad.items() if v}
    result["zero_errors_and_mismatches"] = not any(bad.values())
    result["all_met"] = bool(
        all(r["met"] for r in result["ratios"])
        and result["p50_at_c1"] and all(r["met"] for r in result["p50_at_c1"])
        and result["zero_errors_and_mismatches"]
    )  # fmt: skip
    return result


def plot(summary: dict[str, dict], path, title: str) -> None:
    """Throughput at the highest concurrency (bars: medians, whiskers: min..max over rounds)
    and p50 latency at concurrency 1, per server and protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(row["concurrency"] for row in summary.values())
    rows = sorted(summary.values(), key=lambda r: (r["server"] != "ours", r["server"],
                                                   r["protocol"]))  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, c, field, label in ((axes[0], top, "throughput", f"requests/s at concurrency {top}"),
                                (axes[1], 1, "p50_ms", "p50 latency (ms) at concurrency 1")):
        chosen = [r for r in rows if r["concurrency"] == c and r[field] is not None]
        names = [f"{r['server'].replace('@', chr(10) + '@')}\n{r['protocol']}" for r in chosen]
        values = [r[field] for r in chosen]
        colors = ["tab:blue" if r["server"] == "ours" else
                  "lightsteelblue" if r["server"].startswith("ours@") else "tab:gray"
                  for r in chosen]  # fmt: skip
        if field == "throughput":
            lo = [r[field] - r["throughput_min"] for r in chosen]
            hi = [r["throughput_max"] - r[field] for r in chosen]
            ax.bar(names, values, color=colors, yerr=[lo, hi], capsize=3)
        else:
            ax.bar(names, values, color=colors)
            ax.axhline(P50_LIMIT_MS, color="tab:red", linestyle="--", linewidth=1)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:,.0f}" if field == "throughput" else f"{v:.2f}",
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
