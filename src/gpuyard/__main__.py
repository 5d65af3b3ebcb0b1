from gpuyard.entrypoints.cli.main import run

run()
