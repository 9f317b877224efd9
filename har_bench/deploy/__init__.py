"""From a finished run to a device: ``har-bench export`` (ONNX, int8, pruning, measured) and
``har-bench predict`` (a raw recording through the run's own preprocessing and model).

Submodules are imported where they are used: ``onnx_model`` needs the optional ``export``
extra (``pip install 'har-bench[export]'``), the rest only torch.
"""
