"""MLflow "model from code" entry: MLflow executes this file when it loads a pipeline model.

Logging the wrapper as code instead of a pickle keeps logged models pickle-free (the network is
a Keras v3 file loaded in safe mode). This file is a script for MLflow's loader, not a module
to import; all logic lives in pipeline.tracking.ServingModel.
"""

from pipeline.tracking import register_for_serving

register_for_serving()
