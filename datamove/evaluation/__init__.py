"""Evaluation of trained surrogates on test members, the comparison study's arms, figure data, figures and
the results table."""
