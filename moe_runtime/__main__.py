"""Pretrain a preset: `python -m moe_runtime --preset default` (flags: `--help`; `moe_runtime.pretrain.main`).

The package's entry point rather than `python -m moe_runtime.pretrain`, which runpy warns about: the package's
`__init__` has imported `moe_runtime.pretrain` before running it as `__main__`.
"""

from moe_runtime.pretrain import main

main()
