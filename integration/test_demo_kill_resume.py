"""The demo's scenario, end to end, through its command line: ``python -m examples.demo``.

For several kill points the demo trains a reference run, kills the same run with SIGKILL
while the async save of the kill step is in flight, resumes it in a fresh process, and must
report a bit-exact match. The test then checks the run directory itself, independently of
the demo's own verdict: which step the resumed run restored, and every record and loss.
Whether the save in flight committed before the kill depends on the machine's timing; the
demo's save call returned only once the save before it had committed, so the resumed run
restored either the step before the kill step or, if its save won the race, the kill step.
"""

from __future__ import annotations

import pytest

from examples.demo.processes import read_jsonl
from examples.demo.scenario import compare

STEPS, SAVE_EVERY, SEED = 20, 5, 7


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "kill_at",
    [
        pytest.param(5, id="first-save"),
        pytest.param(10, id="mid-run"),
        pytest.param(15, id="last-save"),
    ],
)
def test_demo_resumes_bit_for_bit(processes, tmp_path, kill_at):
    run_dir = tmp_path / "run"
    demo = processes.python(
        "-m", "examples.demo", "--steps", str(STEPS), "--kill-at", str(kill_at),
        "--seed", str(SEED), "--directory", run_dir,
    )  # fmt: skip
    assert demo.wait(timeout=140) == 0, demo.output
    assert "datarax demo: MATCH, bit for bit" in demo.output

    reference = read_jsonl(run_dir / "reference.jsonl")
    killed = read_jsonl(run_dir / "killed.jsonl")
    resumed = read_jsonl(run_dir / "resumed.jsonl")
    # Unless the kill step's save committed before the kill, the resumed run restored the
    # step before (for the first save: no checkpoint, it started from scratch).
    resumed_from = min(resumed)
    assert resumed_from in (kill_at - SAVE_EVERY, kill_at)
    committed = resumed_from == kill_at
    assert f"the save of step {kill_at} {'had' if committed else 'had not'} committed" in (
        demo.output
    )
    assert f"resumed from step  {resumed_from}" in demo.output
    assert max(killed) >= kill_at - 1  # the killed run did train up to the kill step
    assert sorted(reference) == list(range(STEPS))
    stream = {**{s: log for s, log in killed.items() if s < resumed_from}, **resumed}
    assert sorted(stream) == list(range(STEPS))
    for step in range(STEPS):
        assert stream[step] == reference[step], f"step {step}"
    # and the steps the killed run did that the resumed run redid are the same too
    for step in set(killed) & set(resumed):
        assert killed[step] == resumed[step]
    assert compare(reference, {"resumed": stream}, STEPS) == (True, True, [])
    figure = (run_dir / "loss_curves.png").read_bytes()
    assert figure.startswith(b"\x89PNG\r\n\x1a\n")
    assert str(run_dir / "loss_curves.png") in demo.output


@pytest.mark.timeout(60)
def test_demo_help_and_refusals(processes, tmp_path):
    scratch = tmp_path / "scratch"  # the children's TMPDIR: a refusal makes no run directory
    scratch.mkdir()
    processes.env["TMPDIR"] = str(scratch)
    help_ = processes.python("-m", "examples.demo", "--help")
    assert help_.wait(timeout=30) == 0
    for option in ("--steps", "--kill-at", "--directory", "--seed"):
        assert option in help_.output

    bad = processes.python("-m", "examples.demo", "--steps", "20", "--kill-at", "7")
    assert bad.wait(timeout=30) == 2
    assert "kill_at must be a checkpoint step (a multiple of save_every=5)" in bad.output
    assert list(scratch.iterdir()) == []

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "something").write_text("")
    busy = processes.python("-m", "examples.demo", "--directory", tmp_path / "old")
    assert busy.wait(timeout=30) == 2
    assert "is not empty" in busy.output


@pytest.mark.timeout(60)
def test_demo_without_its_extra_says_what_to_install(processes):
    # -S: no site-packages, so neither optax nor matplotlib (nor JAX) can be imported.
    plain = processes.python("-S", "-m", "examples.demo", "--steps", "20")
    assert plain.wait(timeout=30) == 2
    assert plain.lines == [
        "datarax demo: error: optax and matplotlib not installed: the demo needs the `demo` "
        "extra: pip install -e '.[demo]' (or run `make demo`)"
    ]


def test_the_verdict_sees_one_flipped_bit():
    def log(step: int, loss_bits: int = 0x3F800000, key_word: int = 7) -> dict:
        return {"step": step, "loss_bits": loss_bits, "index": [step], "epoch": [0],
                "global_step": [step], "batch_idx": [step], "record_key": [3],
                "rng_key": [[1, key_word]]}  # fmt: skip

    reference = {s: log(s) for s in range(3)}
    assert compare(reference, {"run": dict(reference)}, 3) == (True, True, [])
    flipped_loss = {**reference, 1: log(1, loss_bits=0x3F800001)}
    records_ok, losses_ok, found = compare(reference, {"run": flipped_loss}, 3)
    assert (records_ok, losses_ok) == (True, False)
    assert "step 1: loss 1.0000001192092896 (bits 0x3f800001), reference 1.0" in found[0]
    flipped_key = {**reference, 2: log(2, key_word=6)}
    assert compare(reference, {"run": flipped_key}, 3) == (
        False,
        True,
        ["run: step 2: records differ in rng_key"],
    )
    missing = {0: reference[0], 2: reference[2]}
    assert compare(reference, {"run": missing}, 3)[:2] == (False, False)
