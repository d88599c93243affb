"""A picture of one conversation: user speech, VAD, turn decisions and agent speech on one time axis.

Lanes, top to bottom: what the user said (coloured by role: turn, barge-in, noise, backchannel; the
voiced parts solid), what the server's VAD heard (from the turn policy's ``speech_start`` /
``speech_end``), the turn policy's decisions (pause, resume, interrupt, end of turn), and what the
listener heard of the agent (one colour per reply; a gap inside a reply is a pause; a red bar is an
``interruption`` reaching the client). Transcripts are written under the user lane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROLE_COLOURS = {"turn": "#4C72B0", "barge_in": "#C44E52", "noise": "#8C8C8C", "backchannel": "#55A868"}
DECISIONS = {
    "pause": ("#DD8452", "v"),
    "resume": ("#55A868", "^"),
    "interrupt": ("#C44E52", "x"),
    "end_of_turn": ("#4C72B0", "D"),
    "smart_turn": ("#8172B3", "o"),
}
LANES = ["agent", "decisions", "VAD", "user"]


def draw_timeline(timeline: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Draw a timeline (``Timeline.to_json()``) to ``path`` (.png or .svg); returns the path."""
    tl = timeline
    y = {name: i for i, name in enumerate(LANES)}
    end = max(float(tl.get("duration_s", 0.0)), 1.0)
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, end * 0.9)), 3.6))
    h = 0.6
    for u in tl["user"]:
        colour = ROLE_COLOURS.get(u["role"], "#4C72B0")
        ax.broken_barh(
            [(u["start"], u["end"] - u["start"])], (y["user"] - h / 2, h), color=colour, alpha=0.18
        )
        ax.broken_barh([(a, b - a) for a, b in u["voiced"]], (y["user"] - h / 2, h), color=colour)
        label = u["text"] or f"({u['role']})"
        ax.text(u["start"], y["user"] - 0.52, label[:48], fontsize=7, va="top", color=colour)
    speech: list[tuple[float, float]] = []
    start: float | None = None
    t0 = _audio_origin(tl)
    for ev in tl["server"]:
        if ev.get("event") == "speech_start":
            start = t0 + float(ev.get("audio_t", ev["t"]))
        elif ev.get("event") == "speech_end" and start is not None:
            speech.append((start, t0 + float(ev.get("audio_t", ev["t"])) - start))
            start = None
    if start is not None:
        speech.append((start, end - start))
    ax.broken_barh(speech, (y["VAD"] - h / 4, h / 2), color="#937860")
    seen: set[str] = set()
    for ev in tl["server"]:
        kind = ev.get("event") if ev.get("event") else ev.get("node")
        if ev.get("event") in DECISIONS:
            colour, marker = DECISIONS[str(ev["event"])]
            lab = None if kind in seen else str(kind)
            seen.add(str(kind))
            ax.scatter([ev["t"]], [y["decisions"]], color=colour, marker=marker, s=46, zorder=3, label=lab)
    palette = plt.get_cmap("tab10")
    for p in tl["agent_playout"]:
        ax.broken_barh(
            [(p["start"], p["end"] - p["start"])],
            (y["agent"] - h / 2, h),
            color=palette(int(p["event_id"]) % 10),
        )
    for eid, t in tl.get("interruptions", {}).items():
        ax.plot([t, t], [y["agent"] - 0.45, y["agent"] + 0.45], color="#C44E52", lw=2.5)
        ax.text(t, y["agent"] + 0.48, f"interruption #{eid}", fontsize=7, color="#C44E52")
    for m in tl["messages"]:
        if m["type"] == "agent_response_correction":
            ax.text(
                m["t"],
                y["agent"] - 0.55,
                f"heard: {m.get('corrected_agent_response', '')[:40]!r}",
                fontsize=7,
                va="top",
            )
    ax.set_yticks(range(len(LANES)), LANES)
    ax.set_ylim(-1.0, len(LANES) - 0.3)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds since the conversation began")
    ax.grid(axis="x", alpha=0.3)
    if seen:
        ax.legend(loc="upper right", fontsize=7, ncol=len(seen), framealpha=0.8)
    ax.set_title(title or tl["scenario"], fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _audio_origin(tl: dict[str, Any]) -> float:
    """VAD times are audio times; the user's stream starts when the conversation does (t = 0)."""
    return float(tl.get("audio_t0", 0.0))
