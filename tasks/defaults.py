"""The analysis's default parameters, in one place: the transforms, the flow and the CLI read them.

Kept free of heavy imports, because the command line reads them before it loads anything else.
"""

# Silhouette is scored for k in K_MIN..K_MAX and the best one is chosen (the article tries 4..8).
K_MIN = 4
K_MAX = 8

# The article's other methods; each can be switched off (segment run --no-basket, ...).
METHODS = ("basket", "rfm", "propensity", "chaid")

# Market basket rules: an itemset must be in at least BASKET_MIN_SUPPORT of a segment's baskets
# and in at least BASKET_MIN_BASKETS of them; rules need at least BASKET_MIN_LIFT.
BASKET_MIN_SUPPORT = 0.01
BASKET_MIN_BASKETS = 10
BASKET_MIN_LIFT = 1.0
BASKET_MAX_LEN = 3

# Repurchase propensity: does a customer buy within the next HORIZON months?
HORIZON = 3

# CHAID: the target it explains ("repurchase" within the horizon, or "segment": membership of the
# high-value segment), and the tree's size limits.
CHAID_TARGET = "repurchase"
CHAID_MAX_DEPTH = 3
CHAID_MIN_PARENT = 100
CHAID_MIN_CHILD = 50
