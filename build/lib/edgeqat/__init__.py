"""edgeqat: any CNN backbone to a verified INT8 edge model, every step tracked in MLflow."""

__version__ = "0.1.0"
