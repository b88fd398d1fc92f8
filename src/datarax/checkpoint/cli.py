"""``datarax-checkpoint``: inspect and verify checkpoints from the command line.

``datarax-checkpoint inspect DIR [--step N] [--json] [--keys]`` shows what a checkpoint
holds; ``datarax-checkpoint verify DIR [--step N] [--json] [--quiet]`` checks it as a
restore would and names the newest restorable step. Also ``python -m datarax.checkpoint``.
Exit status: 0 when everything reads (inspect) or verifies (verify), 1 when something does
not, 2 on a usage error (bad arguments, a path that is not a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from datarax.checkpoint.inspection import NotACheckpointError, inspect, verify

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="datarax-checkpoint",
        description="Inspect and verify datarax checkpoints (Orbax CheckpointManager roots, "
        "step directories or datarax item directories). Reads only; never writes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser("inspect", help="show what a checkpoint holds")
    verify = commands.add_parser(
        "verify", help="check every datarax item as a restore would; exit 1 on a problem"
    )
    for sub in (inspect, verify):
        sub.add_argument("path", metavar="DIR", help="a root, a step or an item directory")
        sub.add_argument("--step", type=int, metavar="N", help="only step N of a root")
        sub.add_argument("--json", action="store_true", help="print JSON (see docs/guides/cli.md)")
    inspect.add_argument("--keys", action="store_true", help="also show the stream keys' bits")
    verify.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: :func:`run` on JAX's CPU backend unless ``JAX_PLATFORMS`` says
    otherwise (checking a checkpoint needs no accelerator: it stays off the training job's).
    """
    if "JAX_PLATFORMS" not in os.environ:
        import jax

        jax.config.update("jax_platforms", "cpu")
    return run(argv)


def run(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Runs the command in this interpreter; returns its exit status.

    Args:
        argv: The arguments, e.g. ``["verify", "checkpoints", "--quiet"]``.
        stdout: Where the report goes (``sys.stdout`` by default).
        stderr: Where progress and errors go (``sys.stderr`` by default).

    Raises:
        SystemExit: Bad arguments (status 2), or ``--help`` (status 0), as argparse does.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    args = build_parser().parse_args(argv)

    def progress(text: str) -> None:
        print(text, file=stderr, flush=True)

    try:
        if args.command == "inspect":
            report = inspect(args.path, step=args.step, keys=args.keys)
        else:
            quiet = args.quiet
            report = verify(args.path, step=args.step, progress=None if quiet else progress)
    except NotACheckpointError as e:
        print(f"datarax-checkpoint: error: {e}", file=stderr)
        return EXIT_USAGE
    if args.json:
        json.dump(report.to_json(), stdout, indent=2)
        stdout.write("\n")
    else:
        _print_report(report, stdout)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _print_report(report: Any, out: TextIO) -> None:
    print(f"{report.path} ({report.layout})", file=out)
    for step in report.steps:
        label = "item" if step.step is None else f"step {step.step}"
        status = "restorable" if step.restorable else "NOT RESTORABLE"
        if report.command == "inspect":
            status = "ok" if step.restorable else "PROBLEMS"
        print(f"{label}: {status}", file=out)
        for item in step.items:
            _print_item(item, out)
        for problem in step.problems:
            print(f"  problem: {problem.message}", file=out)
    for name in report.uncommitted:
        print(f"uncommitted: {name} (a save in flight or interrupted; not a step)", file=out)
    if report.command == "verify":
        problems = report.problems()
        print(f"{len(problems)} problem(s) in {len(report.steps)} step(s).", file=out)
        newest = report.latest_restorable_step
        print(f"newest restorable step: {'none' if newest is None else newest}", file=out)


def _print_item(item: Any, out: TextIO) -> None:
    if not item.datarax:
        state = "ok" if item.ok else "INCOMPLETE"
        handler = (item.handler or "unknown handler").rsplit(".", 1)[-1]
        print(f"  {item.name}: Orbax item ({handler}), {state}", file=out)
    else:
        facts = [f"datarax {item.kind} item" if item.kind else "datarax item"]
        if item.format_version is not None:
            facts.append(f"format {item.format_version}")
        if item.process_count is not None:
            facts.append(f"{item.process_count} process(es)")
        facts.append("ok" if item.ok else "DAMAGED")
        print(f"  {item.name}: {', '.join(facts)}", file=out)
    for process in item.processes:
        _print_process(process, out)
    for problem in item.problems:
        print(f"    problem: {problem.message}", file=out)


def _print_process(process: dict[str, Any], out: TextIO) -> None:
    index = process["process_index"]
    if "counters" in process:
        counters = " ".join(f"{k}={v}" for k, v in process["counters"].items())
        print(
            f"    process {index}: {counters} shard_id={process['shard_id']} "
            f"track_batches={process['track_batches']}",
            file=out,
        )
        for name, s in (process["streams"] or {}).items():
            key = f" key_data={s['key_data']}" if "key_data" in s else ""
            shape = f" key_shape={s['key_shape']}" if s["key_shape"] else ""
            print(f"      stream {name}: impl={s['impl']}{shape} count={s['count']}{key}", file=out)
        return
    note = "" if process["restorable_without_target"] else " (restore needs a target)"
    print(f"    process {index}: {len(process['nodes'])} Metadata node(s){note}", file=out)
    for node in process["nodes"]:
        fields = ", ".join(
            f"{name}={_field_text(f)}" for name, f in node["fields"].items() if f is not None
        )
        print(f"      item{node['path']}: {fields or 'no fields'}", file=out)


def _field_text(field: dict[str, Any]) -> str:
    if field["held"] == "int":
        return str(field["value"])
    shape = str(list(field["shape"] or []))
    where = " global" if field["global"] else ""
    kind = f"key<{field['impl']}>" if field["held"] == "key" else field["dtype"]
    data = f" data={field['data_base64']}" if "data_base64" in field else ""
    return f"{field['container']}{where} {kind}{shape}{data}"


if __name__ == "__main__":
    sys.exit(main())
