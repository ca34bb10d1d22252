"""The chaos benchmark's counting: what the client received, per request, becomes the figures."""

from __future__ import annotations

from loraswarm.bench.chaos import Kill, Phase, Received, Sent, markdown, tally


def test_each_request_is_counted_once_as_what_it_became() -> None:
    phase = Phase("chaos", 1.0)
    for rid, at in [
        ("ok", 0.0),
        ("twice", 1.0),
        ("copy", 2.0),
        ("failed", 3.0),
        ("lost", 4.0),
        ("late", 9.0),
    ]:
        phase.sent[rid] = Sent(rid, "acme", at, submitted=True)
    phase.sent["refused"] = Sent("refused", "acme", 5.0, submitted=False)
    phase.kills = [Kill("planner", 5.0), Kill("kafka", 20.0)]
    received = {
        "ok": [Received("e1", "recommendation.completed", None, 10.0)],
        "twice": [  # two different answers to one request
            Received("e2", "recommendation.completed", None, 11.0),
            Received("e3", "recommendation.completed", None, 12.0),
        ],
        "copy": [  # the same answer delivered again
            Received("e4", "recommendation.completed", None, 6.0),
            Received("e4", "recommendation.completed", None, 7.0),
        ],
        "failed": [Received("e5", "recommendation.failed", "deadline", 13.0)],
        "late": [Received("e6", "recommendation.completed", None, 15.0)],
    }
    t = tally(phase, received)
    assert (t.submitted, t.not_submitted) == (6, 1)
    assert (t.completed, dict(t.failed), t.lost) == (4, {"deadline": 1}, 1)
    assert (t.duplicated, t.redelivered) == (1, 1)
    # The planner kill at 5 s: the first request published after it (9 s) was answered at 15 s.
    assert phase.kills[0].recovery_s == 10.0
    assert phase.kills[1].recovery_s is None and t.unrecovered == 1
    assert "| chaos |" in markdown([phase], [t], rate=0.1, tokens=16)
