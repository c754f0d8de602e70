"""MLflow "model from code" entry: MLflow executes this file when it loads a pipeline model.

Logging the wrapper as code instead of a pickle keeps logged models pickle-free (the network is
a Keras v3 file loaded in safe mode). This file is a script for MLflow's loader, not a module
to import; the wrapper is pipeline.serving.ServingModel.
"""

from pipeline.serving import ServingModel
from pipeline.tracking import serve_from_code

serve_from_code(ServingModel)
