#!/usr/bin/env python
"""Entry point: `python run_ablation.py --help`. All logic lives in the `ablation` package."""
import sys

from ablation.cli import main

if __name__ == "__main__":
    sys.exit(main())
