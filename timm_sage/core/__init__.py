"""Internals of the algorithm: argument checks, the translation-search kernel, the saliency pass, the
unchecked mixing kernels and the one SAGE step. Free to change; the public surface is
:mod:`timm_sage.functional` and :class:`timm_sage.SageMixup`."""
