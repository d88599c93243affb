"""Turn-taking, exactly: corpus scripts played over the protocol on a virtual clock with scripted latencies.

The graph (tests/graphs/turn_sim.yaml) hears real audio with the energy VAD; STT, LLM and TTS are
scripted with fixed latencies (STT 100 ms, first token 200 ms, first audio 100 ms, 50 ms of tone per
character), so every decision of the turn policy lands at a time the test can derive.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ah.nodes.turn_common import DEFAULT_BACKCHANNELS, is_backchannel, words_of
from ah.runtime.graph_loader import load_graph
from ah.sim import Scenario, ScenarioResult, Step, load_scenario, simulate_virtual
from ah.sim.player import Timeline

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "experiments" / "conversations"
OVERLAP = load_graph(ROOT / "tests" / "graphs" / "turn_sim.yaml")
SILENCE = load_graph(ROOT / "tests" / "graphs" / "turn_sim_silence.yaml")
MS_PER_CHAR = 0.05
CHUNK = 0.02  # the simulated microphone's chunk: decisions wait for the chunk that carries the evidence
WINDOW = 0.032  # the energy VAD's window


def play(graph: Any, name: str, **overrides: dict[str, Any]) -> ScenarioResult:
    async def go() -> ScenarioResult:
        return await asyncio.wait_for(
            simulate_virtual(graph, load_scenario(CORPUS / f"{name}.yaml"), overrides=overrides), 20
        )

    result = asyncio.run(go())
    assert result.ok, result.error
    return result


def decisions(tl: Timeline, event: str) -> list[dict[str, Any]]:
    return [d for _, kind, d in tl.server if kind == "turn" and d["event"] == event]


def messages(tl: Timeline, kind: str) -> list[dict[str, Any]]:
    return [{"t": t, **d} for t, k, d in tl.messages if k == kind]


def speech_end_of(tl: Timeline, step: int) -> float:
    return next(u for u in tl.user if u.step == step).voiced[-1][1]


def onset_of(tl: Timeline, step: int) -> float:
    return next(u for u in tl.user if u.step == step).voiced[0][0]


# -- the backchannel rule ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mm-hmm.", True),
        ("Yeah, right.", True),
        ("Okay okay", True),
        ("MMM.", True),
        ("Hmmmm, right", True),
        ("I see.", True),
        ("[coughing]", True),
        ("(clears throat) uh", True),
        ("", True),
        ("Stop.", False),
        ("Yeah, but wait", False),
        ("I see a problem", False),
    ],
)
def test_backchannel_rule(text: str, expected: bool) -> None:
    assert is_backchannel(text, DEFAULT_BACKCHANNELS) is expected


def test_words_ignore_punctuation_and_noise_tags() -> None:
    assert words_of("Wait, stop! [laughs] I meant tomorrow.") == ["wait", "stop", "i", "meant", "tomorrow"]


# -- overlap_aware ---------------------------------------------------------------------------------------------------
def test_a_cough_pauses_the_reply_and_the_same_reply_resumes_where_it_stopped() -> None:
    r = play(OVERLAP, "noise_01")
    tl = r.timeline
    noise = r.turns[1]
    assert noise.role == "noise" and noise.agent_speaking_at_onset
    assert noise.paused and noise.false_cut_off is False
    assert not tl.interruptions and not messages(tl, "interruption")
    # One reply, heard whole: its audio stopped and started again, and nothing of it was lost.
    reply = messages(tl, "agent_response")
    assert len(reply) == 1
    eid = reply[0]["event_id"]
    segments = [p for p in tl.playout if p.event_id == eid]
    assert len(segments) == 2
    heard = sum(p.end - p.start for p in segments)
    assert heard == pytest.approx(len(reply[0]["agent_response"]) * MS_PER_CHAR, abs=1e-6)
    # Paused when the VAD confirmed the burst, resumed resume_timeout_ms (700) after the burst's end.
    (pause,) = decisions(tl, "pause")
    (resume,) = decisions(tl, "resume")
    assert resume["reason"] == "no transcript in time"
    vad_end = next(d for d in decisions(tl, "speech_end") if d["t"] > pause["t"])
    lag = resume["t"] - (tl.audio_t0 + vad_end["audio_t"])
    assert 0.7 - 1e-6 <= lag <= 0.7 + CHUNK + 1e-6
    # The listener's audio stopped once the lead it held had played: within audio_lead_ms (150) + a chunk.
    assert segments[0].end - pause["t"] <= 0.15 + 0.04 + 1e-6
    assert segments[1].start == pytest.approx(resume["t"], abs=1e-6)


def test_a_backchannel_resumes_as_soon_as_its_transcript_says_so() -> None:
    r = play(OVERLAP, "backchannel_01")
    tl = r.timeline
    bc = r.turns[1]
    assert bc.paused and bc.false_cut_off is False
    (resume,) = decisions(tl, "resume")
    assert resume["reason"] == "not a turn: 'Mm-hmm.'"
    # The transcript comes 100 ms (the scripted STT latency) after the VAD's end of speech reached the policy.
    end_seen = next(d["t"] for d in decisions(tl, "speech_end") if d["t"] > decisions(tl, "pause")[0]["t"])
    assert resume["t"] == pytest.approx(end_seen + 0.1, abs=1e-6)
    assert bc.resume_ms is not None and bc.resume_ms < 1000  # the goal: back within 1 s of the burst's end
    # "Mm-hmm" did not become a user turn: one end of turn (the question), one reply.
    assert len(decisions(tl, "end_of_turn")) == 1
    assert len(messages(tl, "agent_response")) == 1


def test_a_barge_in_pauses_at_once_commits_after_600_ms_of_voice_and_corrects_what_was_heard() -> None:
    r = play(OVERLAP, "barge_in_01")
    tl = r.timeline
    b = r.turns[1]
    onset = onset_of(tl, 1)
    (pause,) = decisions(tl, "pause")
    interrupt = next(d for d in decisions(tl, "interrupt") if d["reason"] == "speech")
    # The VAD confirms speech after min_speech_ms (64) + its window; the pause follows at once.
    assert pause["t"] - onset <= 0.064 + WINDOW + CHUNK + 1e-6
    # Committed on the VAD window that makes 600 ms of voice since the burst began.
    assert 0.6 - WINDOW <= interrupt["t"] - (tl.audio_t0 + pause["audio_t"]) <= 0.6 + WINDOW + CHUNK
    (interruption,) = messages(tl, "interruption")
    (correction,) = messages(tl, "agent_response_correction")
    assert interruption["t"] == pytest.approx(interrupt["t"], abs=1e-6)  # in-memory link: no network
    original, heard = correction["original_agent_response"], correction["corrected_agent_response"]
    assert original.startswith(heard) and original[len(heard)] == " "  # whole words only
    played = sum(p.end - p.start for p in tl.playout if p.event_id == interruption["event_id"])
    assert len(heard) <= played / MS_PER_CHAR <= len(heard) + len(original[len(heard) :].split()[0]) + 1
    # The audio stopped at the client within the lead after the pause, and the barge-in got its answer.
    assert (
        b.barge_in_reaction_ms is not None
        and b.barge_in_reaction_ms <= (0.064 + WINDOW + CHUNK + 0.15) * 1000
    )
    assert b.response_latency_ms is not None
    assert [d["text"] for d in decisions(tl, "end_of_turn")][-1] == "Wait, stop, I meant tomorrow."


def test_one_short_real_word_commits_by_its_transcript() -> None:
    r = play(OVERLAP, "barge_in_06")  # "Stop." — 0.4 s, shorter than interrupt_min_speech_ms
    tl = r.timeline
    reasons = [d["reason"] for d in decisions(tl, "interrupt")]
    assert reasons[0] == "words: 'Stop.'"
    assert not decisions(tl, "resume")
    assert decisions(tl, "end_of_turn")[-1]["text"] == "Stop."


def test_a_late_backchannel_transcript_after_the_resume_does_not_become_a_turn() -> None:
    # STT slower than resume_timeout_ms: the reply resumes first; "Mm-hmm" arrives later and is dropped.
    r = play(OVERLAP, "backchannel_01", stt={"latency_ms": 900})
    tl = r.timeline
    (resume,) = decisions(tl, "resume")
    assert resume["reason"] == "no transcript in time"
    late = [d for d in decisions(tl, "backchannel") if d.get("late")]
    assert [d["text"] for d in late] == ["Mm-hmm."]
    assert len(decisions(tl, "end_of_turn")) == 1 and not tl.interruptions


def test_a_late_real_transcript_after_the_resume_still_takes_the_turn() -> None:
    r = play(OVERLAP, "barge_in_06", stt={"latency_ms": 900})
    tl = r.timeline
    assert decisions(tl, "resume")[0]["reason"] == "no transcript in time"
    assert decisions(tl, "end_of_turn")[-1]["text"] == "Stop."
    assert len(tl.interruptions) == 1  # the resumed reply was cut when the turn came


def test_thresholds_are_params() -> None:
    # A longer minimum: the same barge-in is committed later (on its transcript, at the end of speech).
    r = play(OVERLAP, "barge_in_01", turn={"interrupt_min_speech_ms": 3000})
    reasons = [d["reason"] for d in decisions(r.timeline, "interrupt")]
    assert reasons[0].startswith("words:")
    # An empty backchannel list: "Mm-hmm" is a word like any other and takes the turn.
    r = play(OVERLAP, "backchannel_01", turn={"backchannels": []})
    assert r.turns[1].false_cut_off is True


# -- the baseline, on the same scripts -------------------------------------------------------------------------------
def test_the_silence_policy_is_cut_off_by_a_cough_where_overlap_aware_is_not() -> None:
    assert play(SILENCE, "noise_01").turns[1].false_cut_off is True
    assert play(OVERLAP, "noise_01").turns[1].false_cut_off is False


def test_a_mid_sentence_pause_ends_the_turn_early_under_silence_endpointing() -> None:
    r = play(SILENCE, "pause_01")
    assert r.turns[0].premature is True
    assert next(d["text"] for d in decisions(r.timeline, "end_of_turn")) == "I would like to fly to Paris"


# -- the simulator itself ------------------------------------------------------------------------------------------
def test_the_same_script_gives_the_same_timeline_every_time() -> None:
    a = play(OVERLAP, "barge_in_02").timeline.to_json()
    b = play(OVERLAP, "barge_in_02").timeline.to_json()
    for tl in (a, b):
        for m in tl["messages"]:
            m.pop("conversation_id", None)
    assert a == b


def test_the_corpus_has_at_least_30_valid_scripts_of_every_category() -> None:
    scripts = [load_scenario(p) for p in sorted(CORPUS.glob("*.yaml"))]
    assert len(scripts) >= 30
    cats = {s.category for s in scripts}
    assert cats == {"clean", "barge_in", "noise", "backchannel", "pause"}
    assert all(sum(s.category == c for s in scripts) >= 5 for c in cats)


def test_a_script_naming_a_missing_file_is_refused_with_the_file_named(tmp_path: Path) -> None:
    from ah.sim import ScriptError

    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: x\ncategory: clean\nsteps:\n  - say: nope.wav\n")
    with pytest.raises(ScriptError, match=r"bad.yaml: steps.0.say: no audio file .*nope.wav"):
        load_scenario(bad)
    bad.write_text("scenario: x\ncategory: chat\nsteps: []\n")
    with pytest.raises(ScriptError, match=r"bad.yaml: category"):
        load_scenario(bad)


def test_agent_audio_trigger_waits_for_the_agent() -> None:
    sc = Scenario(
        scenario="t",
        category="barge_in",
        audio_dir=str(CORPUS / "audio"),
        steps=[
            Step(say="q01a.wav", text="What is the weather like today?"),
            Step(say="i06a.wav", text="Stop.", role="barge_in", after="agent_audio", delay_ms=500),
        ],
    )

    async def go() -> ScenarioResult:
        return await simulate_virtual(OVERLAP, sc)

    r = asyncio.run(go())
    tl = r.timeline
    first_audio = min(tl.first_audio.values())
    assert tl.user[1].start == pytest.approx(first_audio + 0.5, abs=CHUNK + 1e-6)


# -- smart_turn, with the real model -----------------------------------------------------------------------------
SMART = ROOT / "tests" / "graphs" / "turn_sim_smart.yaml"


def _smart() -> Any:
    from ah.nodes.model_store import ModelMissing, require

    try:
        require("smart-turn-v3.2")
    except ModelMissing:
        pytest.skip("smart-turn model not pulled (ah models pull smart-turn-v3.2)")
    return load_graph(SMART)


def test_smart_turn_features_match_whisper_log_mel_and_the_model_judges_completeness() -> None:
    import numpy as np

    from ah.nodes.turn_smart import _load, features, model_path, predict
    from ah.sim.script import load_clip

    model = _load(model_path(), 1)
    feats = features(model[1], np.zeros(16000, np.float32))
    assert feats.shape == (1, 80, 800) and feats.dtype == np.float32
    clip = load_clip(CORPUS / "audio" / "p04a.wav")  # "I was thinking about | going to the beach ..."
    x = np.frombuffer(clip.pcm, dtype="<i2").astype(np.float32) / 32768
    (a, b), *_ = clip.voiced
    first = x[int((a - 0.2) * 16000) : int((b + 0.2) * 16000)]
    assert predict(model, first) < 0.5  # "I was thinking about" — not finished
    q = load_clip(CORPUS / "audio" / "q07a.wav")  # "What is the capital of Australia?"
    xq = np.frombuffer(q.pcm, dtype="<i2").astype(np.float32) / 32768
    assert predict(model, xq[: int(((q.speech_end or 0) + 0.2) * 16000)]) > 0.5


def test_smart_turn_waits_through_a_pause_the_model_calls_incomplete() -> None:
    smart = _smart()
    r = play(smart, "pause_04")
    tl = r.timeline
    verdicts = decisions(tl, "smart_turn")
    assert verdicts[0]["complete"] is False  # after "I was thinking about"
    assert r.turns[0].early_end_of_turn is False and r.turns[0].premature is False
    (eot,) = decisions(tl, "end_of_turn")
    assert eot["text"] == "I was thinking about going to the beach this weekend."
    # The silence policy ends the same turn in the pause.
    assert play(SILENCE, "pause_04").turns[0].early_end_of_turn is True


def test_smart_turn_ends_a_complete_turn_after_its_short_silence() -> None:
    smart = _smart()
    r = play(smart, "clean_05", turn={"complete_silence_ms": 200})
    tl = r.timeline
    (verdict,) = decisions(tl, "smart_turn")
    assert verdict["complete"] is True
    (eot,) = decisions(tl, "end_of_turn")
    end = decisions(tl, "speech_end")[0]
    # The VAD's hangover (450 ms) is longer than the 200 ms asked for: the turn ends as the end is
    # confirmed, once the transcript (100 ms later) is in — no later than the silence policy.
    silence = play(SILENCE, "clean_05")
    (s_eot,) = decisions(silence.timeline, "end_of_turn")
    assert eot["t"] - end["t"] <= s_eot["t"] - decisions(silence.timeline, "speech_end")[0]["t"] + 1e-6


# -- preemptive generation ---------------------------------------------------------------------------------------
# A short VAD hangover and a long endpoint leave a window in which the transcript is in but the turn is not
# yet final: that is when a preemptive reply starts.
WINDOW_OVERRIDES: dict[str, dict[str, Any]] = {"vad": {"min_silence_ms": 160}}


def test_preemptive_generation_starts_the_reply_early_and_releases_it_at_the_end_of_turn() -> None:
    plain = play(OVERLAP, "clean_01", turn={"endpoint_silence_ms": 1200}, **WINDOW_OVERRIDES)
    pre = play(
        OVERLAP, "clean_01", turn={"endpoint_silence_ms": 1200, "preemptive": True}, **WINDOW_OVERRIDES
    )
    (start,) = decisions(pre.timeline, "preempt")
    (eot,) = decisions(pre.timeline, "end_of_turn")
    assert eot["preempted"] is True and eot["scope"] == start["scope"] and start["t"] < eot["t"]
    # Same end of turn in both; the held reply had its LLM time (200 ms first token + 20 ms a word) done.
    assert eot["t"] == pytest.approx(decisions(plain.timeline, "end_of_turn")[0]["t"], abs=1e-6)
    a, b = plain.turns[0].response_latency_ms, pre.turns[0].response_latency_ms
    assert a is not None and b is not None and a - b >= 200
    # Nothing of the reply reached the client before the turn was final.
    assert min(pre.timeline.reply_start.values()) >= eot["t"] - 1e-9


def test_a_preemptive_reply_is_dropped_unheard_when_the_user_goes_on() -> None:
    r = play(OVERLAP, "pause_01", turn={"endpoint_silence_ms": 1200, "preemptive": True}, **WINDOW_OVERRIDES)
    tl = r.timeline
    first, second = decisions(tl, "preempt")
    (dropped,) = decisions(tl, "preempt_dropped")
    assert dropped["scope"] == first["scope"] and dropped["reason"] == "speech resumed"
    (eot,) = decisions(tl, "end_of_turn")
    assert (
        eot["scope"] == second["scope"]
        and eot["text"] == "I would like to fly to Paris on the first of June."
    )
    # One reply was heard, after the end of the whole turn; the dropped one never showed.
    assert len(messages(tl, "agent_response")) == 1
    assert min(tl.reply_start.values()) >= eot["t"] - 1e-9
    assert r.turns[0].premature is False
