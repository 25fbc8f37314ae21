"""The analysis's default parameters, in one place: the transforms, the flow and the CLI read them.

Kept free of heavy imports, because the command line reads them before it loads anything else.
"""

# Silhouette is scored for k in K_MIN..K_MAX and the best one is chosen (the article tries 4..8).
K_MIN = 4
K_MAX = 8
