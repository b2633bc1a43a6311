"""Our side-by-side decode against llama.cpp's llama-batched-bench on the embedded GGUF:
alternating rounds at batches 1, 2, 8 and 32, the median batch-2 step-time ratio (llama.cpp / ours,
> 1 = we are faster; target >= 1.0x, aim 1.5x). Build llama.cpp first with
scripts/llama_build.py. Pass --rounds N, --tokens N or --json. The full `python -m
persona_explorer bench` includes this comparison."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_explorer.dev.bench_llama import main

if __name__ == "__main__":
    sys.exit(main())
