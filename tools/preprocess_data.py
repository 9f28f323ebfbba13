"""Tokenise text/JSONL/parquet/HF datasets into Megatron .bin/.idx (same as `megadrp preprocess`).

    python tools/preprocess_data.py --input FILE_OR_DIR... --output-prefix PREFIX --tokenizer DIR --append-eod
"""
import sys

from megadrp.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
