"""pipeline: staged Keras training and Optuna searches, every trial tracked in MLflow.

Nothing is imported here on purpose: `python -m pipeline.run --help` must stay instant,
so TensorFlow, MLflow and Optuna are only imported by the modules that use them.
"""

__version__ = "0.1.0"
