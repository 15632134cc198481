"""Opt-in accelerations: the BatchNorm-folded channels-last fast copy of a model, two parallel
CPU streams for batched gradient techniques, and malloc reuse between batches.

Each computes the same function and is off in the library API; the runner switches them on from
its configuration where they were measured to pay (docs/performance.md). Importing these modules
changes nothing in the process; they import the core only.
"""
