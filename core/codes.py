"""Exit codes, in one place: the command line, the engine and every client use these."""

from __future__ import annotations

#: every task succeeded, all approved work merged, verify passed and the result landed
EXIT_OK = 0
#: the run completed but something failed (a task, a merge, verify, landing)
EXIT_FAILED = 1
#: bad usage or bad input, reported before anything is created
EXIT_USAGE = 2
#: the run was stopped (Ctrl-C, SIGTERM, corral stop, stopping it from the dashboard), after cleanup
EXIT_INTERRUPTED = 130
