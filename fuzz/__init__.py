"""Fuzzing every parser of pinhole: seeds from the repo's real inputs, a bounded campaign, crashes kept.

- :mod:`fuzz.corpus`: the seed inputs of each target (test data, saved runs' captures, test vectors, scenarios);
- :mod:`fuzz.mutate`: the deterministic mutator (byte flips, truncation, splicing, repeated lines, huge numbers);
- :mod:`fuzz.bundle`: several datagrams as one input, replayed as a capture for the wire decoder;
- :mod:`fuzz.targets`: one function per parser; what it may raise is caught there, anything else is a crash;
- :mod:`fuzz.engine`: runs a target on N inputs under a per-input time budget and records distinct crashes;
- :mod:`fuzz.coverage_guided`: the same targets under atheris (libFuzzer), when it is installed;
- ``python -m fuzz``: the campaign, one worker process per target.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CRASHES = Path(__file__).resolve().parent / "crashes"
