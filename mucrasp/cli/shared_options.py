"""Options that several commands take with the same meaning: one definition, each command's own default."""

from __future__ import annotations

import typer

from mucrasp.validation import field_default


def device_option(config_class: type):
    return typer.Option(
        field_default(config_class, "device"), help="auto (CUDA when there is one), cpu, cuda or cuda:N."
    )


def dtype_option(config_class: type):
    return typer.Option(
        field_default(config_class, "dtype"),
        help="auto (the checkpoint's, fp32 on a CPU without units for it), bfloat16, float16 or float32.",
    )
