"""Floor 1: records, the Store protocol and one module per backend. Imports nothing of ours above."""
