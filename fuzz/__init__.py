"""Coverage-guided fuzz targets (atheris/libFuzzer) for everything a guest controls.

    python -m fuzz --runs 100000            # every target, N inputs each, a summary table
    python -m fuzz.virtio_blk -runs=1000    # one target, any libFuzzer flag (or a crash file)

See docs/fuzzing.md.
"""
