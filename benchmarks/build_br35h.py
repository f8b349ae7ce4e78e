"""Build the Br35H release benchmark: ``python -m medue.efficacy.br35h`` (kept here under its old name)."""

from medue.efficacy.br35h import main

if __name__ == "__main__":
    main()
