"""Regenerate tests/golden/codec_golden.json. Run only on purpose: the test compares against it.

    .venv/bin/python tests/golden/make_codec_golden.py
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.codec_cases import combo_id, combos, fit_fixed  # noqa: E402


def main() -> None:
    out = {}
    for spec in combos():
        codec, phys, states = fit_fixed(spec)
        rows = [0, 17, 40]
        model = codec.encode(phys[rows])
        out[combo_id(spec)] = {
            "slots": codec.layout.slots.tolist(),
            "encoded": codec.layout.take(model).tolist(),
            "state": codec.state_layout.take(codec.encode_state(states[rows])).tolist(),
        }
    path = Path(__file__).with_name("codec_golden.json")
    path.write_text(json.dumps(out, indent=0, sort_keys=True))
    print(f"wrote {len(out)} cases to {path}")


if __name__ == "__main__":
    main()
