"""Reports: the run report, the comparison report and the model card."""
