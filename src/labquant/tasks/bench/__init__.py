"""`labquant-bench`: every hot path measured side by side in one run, so ratios hold even when
absolute times drift on a shared machine."""
