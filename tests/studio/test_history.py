"""The page's history, kept in the browser: nothing in it is trusted when it comes back."""

from __future__ import annotations

from pathlib import Path

from musicgen.studio import history
from musicgen.studio.request import Request


def request(prompt: str = "lofi") -> Request:
    return Request(prompt, 4.0, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, None)


def test_entries_keep_what_makes_the_take_again(tmp_path: Path) -> None:
    file = tmp_path / "musicgen-42-0123456789ab.wav"
    e = history.entry(request(), 42, "facebook/musicgen-small", 4.0, file)
    assert e["file"] == file.name and e["seed"] == 42 and e["duration"] == 4.0
    assert history.settings(e) == {"prompt": "lofi", "duration": 4.0, "model_size": "small", "stereo": False,
                                   "decoder": "encodec", "top_k": 250, "top_p": 0.0, "temperature": 1.0,
                                   "cfg_coef": 3.0, "seed": 42}
    kept: list = []
    for i in range(25):
        kept = history.add(kept, {**e, "seed": i})
    assert len(kept) == history.LIMIT and kept[0]["seed"] == 24  # newest first
    assert history.rows(kept)[0] == ["lofi", 24, "facebook/musicgen-small", 4.0]


def test_hostile_entries_restore_nothing_unsafe(tmp_path: Path) -> None:
    ours = tmp_path / "musicgen-7-mbd-0123456789ab.wav"
    ours.write_bytes(b"RIFF")
    assert history.result_file(tmp_path, {"file": ours.name}) == ours
    for name in ("../../etc/passwd", "/etc/passwd", "musicgen-7-0123456789ab.wav/../../x", "a.wav", 5, None,
                 "musicgen-8-0123456789ab.wav"):  # (the last: ours in form, but no such file)
        assert history.result_file(tmp_path, {"file": name}) is None
    assert history.result_file(tmp_path, "not a dict") is None
    assert history.settings({"prompt": 3, "seed": "1; rm -rf /", "stereo": "yes", "top_k": True,
                             "duration": 5}) == {"duration": 5}
    assert history.add("junk", {"seed": 1}) == [{"seed": 1}] and history.rows({"x": 1}) == []
