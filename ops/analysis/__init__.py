"""Analyses of trained models: loss landscapes, Hessian spectra, feature maps, corruption robustness.

`fixed` holds what landscapes and Hessians share (fixed MC-dropout masks and batches); `landscape_files` the
landscape results and their files.
"""
