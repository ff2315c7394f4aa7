"""The `zlab` command: run, sheet, report, serve, generate, find-scale.

Exit codes: 0 success; 1 some cells failed (results are still written) or the work failed;
2 bad input (nothing was sent); 3 the token was refused; 4 the balance ran out (3 and 4: sending
stopped at once, accepted jobs were still collected); 5 the run directory is busy (another run holds
it); 130 interrupted (Ctrl-C; rerun the same command to resume).
The API token comes only from the environment (RUNCOMFY_TOKEN / RUNCOMFY_API_KEY), never a flag.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from zlab import errors
from zlab.cli import commands
from zlab.cli.generate import generate
from zlab.cli.parser import build_parser, parse_lora

__all__ = ["main", "parse_lora"]

BAD_INPUT = (errors.ValidationError, errors.ConfigError, errors.BudgetExceeded)
BUSY = 5

# The library's messages name its Python keywords; the command's name its flags.
_FLAGS = (
    (re.compile(r"\bpass stack=True\b"), "add --stack"),
    (re.compile(r"\bpass max_cells=…"), "pass --max-cells N"),
    (re.compile(r"\b(x|y|page)=('[^']*'|\"[^\"]*\")"), lambda m: f"--{m[1]} {m[2][1:-1]}"),
    (re.compile(r"\bcell_timeout=\b"), "--cell-timeout "),
    (re.compile(r", filter the DataFrame,"), ","),
    (re.compile(r"^(concurrency|budget|cell_timeout|max_cells): "), lambda m: f"--{m[1].replace('_', '-')}: "),
)


def in_flags(message: str) -> str:
    """A library message as the command says it: `pass stack=True` → `add --stack`, `y='seed'` → `--y seed`."""
    for pattern, replacement in _FLAGS:
        message = pattern.sub(replacement, message)
    return message


INTERRUPTED = {  # what Ctrl-C means depends on the command: only a run has something to resume
    "run": "zlab: interrupted; run the same command again to resume",
    "serve": "zlab serve: stopped",
}
COMMANDS = {
    "run": commands.run, "sheet": commands.sheet, "report": commands.report, "serve": commands.serve,
    "generate": generate, "export": commands.export, "find-scale": commands.find_scale,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except errors.RunDirBusy as exc:
        print(f"zlab: error: {in_flags(str(exc))}", file=sys.stderr)
        return BUSY
    except BAD_INPUT as exc:
        print(f"zlab: error: {in_flags(str(exc))}", file=sys.stderr)
        return 2
    except errors.ZlabError as exc:
        print(f"zlab: error: {in_flags(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED.get(args.command, "zlab: interrupted"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
