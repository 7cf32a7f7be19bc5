"""The command-line tools: ``timm-sage`` (cli: train, configs, recipe, saliency, show, bench, study,
agreement) and their helpers (reports, plots, timing). matplotlib is imported here only, on use."""
