"""gpuyard: a training-job service for GPU workstations shared by several people."""

from gpuyard.report import report

__version__ = "0.1.0"
__all__ = ["__version__", "report"]
