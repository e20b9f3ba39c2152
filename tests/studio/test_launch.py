"""musicgen/studio/launch.py: the command line's CPU quantization default."""

from __future__ import annotations

from musicgen.studio import launch


def test_app_quantizes_by_default_on_cpu() -> None:
    assert launch.default_quantize("auto", "cpu") == "int8"
    assert launch.default_quantize("auto", "cuda") is None
    assert launch.default_quantize("none", "cpu") is None and launch.default_quantize("int8", "cuda") == "int8"
    assert launch.parser().parse_args([]).quantize == "auto"
