"""Floor 1: records, the Store protocol, one module per backend. Imports nothing of ours above."""
