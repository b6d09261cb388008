"""CompleteP / μP parameterization of a stock transformers Llama (spec: completep.md).

`model` holds the settings, the thin subclass with its hooks, the table's init and the folds to and from a plain
Llama; `optim` the per-group AdamW table; `growth` the depth/width corrections; `coord_check` the coordinate check.
"""

PARAM_FILE = "parameterization.json"  # the settings beside a plain folder's weights (`model.write_parametrization`)
