"""Engine benchmarks (side by side vs the persona_vectors way, decode step vs the bandwidth
bound, extraction). Same as `python -m persona_explorer bench`; pass --json or --quick."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_explorer.dev.bench import main

if __name__ == "__main__":
    sys.exit(main())
