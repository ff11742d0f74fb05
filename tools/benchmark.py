"""`make bench`: speed, memory and deep-gradient benchmarks; each writes OUT/<name>.json and prints a table.

python tools/benchmark.py {train,deep,data,soak,eval,prepare,all} [--out bench_results] [--quick]
[--device auto|cpu|cuda]

Same as ``iresvid bench``; see `iresvid.benchmarks.runner`.
"""

import sys

from iresvid.benchmarks.runner import main

if __name__ == "__main__":
    sys.exit(main())
