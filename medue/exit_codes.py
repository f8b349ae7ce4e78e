"""Exit codes of the ``medue`` command and of a release (:attr:`medue.pipeline.runner.RunSummary.exit_code`)."""

#: Finished; every item exported (or skipped as already done).
EXIT_OK = 0
#: An unexpected error (one line, no traceback: a full disk, the tracking store, a fault of the run).
EXIT_ERROR = 1
#: Invalid config or arguments (every problem listed at once).
EXIT_CONFIG = 2
#: The fidelity gate failed (a volume, or the release-level diagnostic check).
EXIT_GATE = 3
#: Partial batch: some inputs quarantined or failed, the rest released.
EXIT_PARTIAL = 4

#: The codes in words, for ``--help`` (the same text as each constant's comment, shortened).
EXIT_WORDS = {EXIT_OK: "ok", EXIT_ERROR: "unexpected error", EXIT_CONFIG: "invalid config/arguments",
              EXIT_GATE: "fidelity gate failed",
              EXIT_PARTIAL: "partial batch (some inputs quarantined or failed; see <output>/quarantine)"}

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_GATE", "EXIT_OK", "EXIT_PARTIAL", "EXIT_WORDS"]
