"""Names shared by the seam (quant/backend.py) and the modules behind it, kept in a leaf so
neither imports the other for them."""

# The name of every learned-exponent parameter (qconfig.learn_scales, quant/learned.py): lit/
# gives the parameters of this name their own optimizer group.
LEARNED_THRESHOLD = "log2_threshold"
