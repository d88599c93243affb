"""Per-turn metrics from a simulated conversation's timeline (definitions: ARCHITECTURE.md §5).

One :class:`TurnMetrics` per scripted utterance, keyed ``scenario#step`` so that two graph variants
played on the same script can be paired turn by turn. All times are in milliseconds; a figure that
does not apply to a turn (a noise has no response latency) is ``None``.

* ``response_latency_ms`` (turn, barge_in): from the utterance's last voiced sample, as sent, to the
  first audio chunk of a new reply received by the client.
* ``premature`` (turn): the listener saw or heard the agent begin a reply while the utterance was
  still going on (a pause in mid-sentence taken for the end of the turn).
* ``early_end_of_turn`` (turn): the server's turn policy ended the turn while the utterance was still
  going on, whether or not the listener noticed (an overlap-aware policy may hold that reply back).
* ``barge_in_reaction_ms`` (barge_in): from the utterance's first voiced sample to the agent's audio
  stopping at the client.
* ``interruption_client_ms`` / ``cancel_tail_server_ms``: from the server's decision to cut the reply
  (the turn policy's ``interrupt`` event) to the ``interruption`` reaching the client / to the
  reply's last audio chunk leaving the server (0 when none left after the decision).
* ``paused``, ``resume_ms``, ``false_cut_off`` (noise, backchannel): whether the agent's audio stopped
  during the burst, how long after the burst's end it resumed, and whether the reply was stopped for
  good by something that was not a turn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ah.sim.player import Playout, Timeline, UserSpan

EPS = 1e-6


@dataclass(slots=True)
class TurnMetrics:
    key: str
    scenario: str
    category: str
    step: int
    role: str
    text: str
    response_latency_ms: float | None = None
    premature: bool | None = None
    early_end_of_turn: bool | None = None
    barge_in_reaction_ms: float | None = None
    interruption_client_ms: float | None = None
    cancel_tail_server_ms: float | None = None
    agent_speaking_at_onset: bool | None = None
    paused: bool | None = None
    resume_ms: float | None = None
    false_cut_off: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def _playing_at(playout: list[Playout], t: float) -> Playout | None:
    for p in playout:
        if p.start - EPS <= t < p.end:
            return p
    return None


def _reply_stop(playout: list[Playout], event_id: int, after: float) -> tuple[float, float | None]:
    """When reply ``event_id``'s audio, playing at ``after``, stopped; and when it played again (if it did)."""
    segs = sorted((p for p in playout if p.event_id == event_id), key=lambda p: p.start)
    stop = after
    for p in segs:
        if p.start - EPS <= stop <= p.end + EPS:
            stop = max(stop, p.end)
    later = [p.start for p in segs if p.start > stop + EPS]
    return stop, (min(later) if later else None)


def _server_interrupts(tl: Timeline) -> dict[int, tuple[float, float | None]]:
    """event_id -> (decision time, last audio sent), from the server's own events."""
    decided: dict[int, float] = {}
    for t, kind, d in tl.server:
        if kind == "turn" and d.get("event") == "interrupt" and "scope" in d:
            decided.setdefault(int(d["scope"]), float(d.get("t", t)))
    out: dict[int, tuple[float, float | None]] = {}
    for _t, kind, d in tl.server:
        if kind == "interruption_sent":
            scope = int(d["scope"])
            if scope in decided:
                last = d.get("last_audio_t")
                out[int(d["event_id"])] = (decided[scope], None if last is None else float(last))
    return out


def turn_metrics(tl: Timeline, category: str) -> list[TurnMetrics]:
    out: list[TurnMetrics] = []
    cuts = _server_interrupts(tl)
    spans = sorted(tl.user, key=lambda u: u.start)
    for n, u in enumerate(spans):
        next_start = spans[n + 1].start if n + 1 < len(spans) else tl.end + 1
        m = TurnMetrics(f"{tl.scenario}#{u.step}", tl.scenario, category, u.step, u.role, u.text)
        if u.voiced:
            _judge(tl, u, m, cuts, next_start)
        out.append(m)
    return out


def _judge(
    tl: Timeline, u: UserSpan, m: TurnMetrics, cuts: dict[int, tuple[float, float | None]], next_start: float
) -> None:
    onset, speech_end = u.voiced[0][0], u.voiced[-1][1]
    at_onset = _playing_at(tl.playout, onset)
    m.agent_speaking_at_onset = at_onset is not None
    if u.role in ("turn", "barge_in"):
        new = [
            t
            for eid, t in tl.first_audio.items()
            if t >= speech_end and (at_onset is None or eid != at_onset.event_id)
        ]
        m.response_latency_ms = _ms(min(new) - speech_end) if new else None
        m.premature = any(onset < t < speech_end for t in tl.reply_start.values())
        m.early_end_of_turn = any(
            kind == "turn" and d.get("event") == "end_of_turn" and onset < float(d.get("t", t)) < speech_end
            for t, kind, d in tl.server
        )
    if at_onset is None:
        return
    eid = at_onset.event_id
    stop, again = _reply_stop(tl.playout, eid, onset)
    interrupted_at = tl.interruptions.get(eid)
    cut = interrupted_at is not None and onset - EPS <= interrupted_at < next_start
    if u.role == "barge_in":
        m.barge_in_reaction_ms = _ms(stop - onset)
    if cut and eid in cuts:
        decided, last_audio = cuts[eid]
        m.interruption_client_ms = _ms(interrupted_at - decided) if interrupted_at is not None else None
        m.cancel_tail_server_ms = _ms(max(0.0, last_audio - decided)) if last_audio is not None else 0.0
    if u.role in ("noise", "backchannel"):
        m.false_cut_off = cut
        # Paused: the audio stopped while the reply still had more to say (it played again later).
        m.paused = again is not None
        if again is not None:
            m.resume_ms = _ms(max(0.0, again - speech_end))


def summary(values: list[float]) -> dict[str, float | int | None]:
    """mean / p50 / p95 / p99 / max of a list of numbers (empty: n = 0)."""
    import numpy as np

    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "mean": round(float(a.mean()), 2),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }
