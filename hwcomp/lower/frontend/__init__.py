"""From a checked ONNX model to Relax: legalisation, the frontend's known gaps, the import.

``legalize`` rewrites what TVM's ONNX frontend gets wrong or lacks (one ONNX pass per case,
:mod:`hwcomp.passes`); ``gaps`` lists the op cases the frontend cannot be trusted with;
``relax_import`` imports into Relax and names the ONNX node when the frontend fails.
"""
