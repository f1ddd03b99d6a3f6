"""Data quality (issue 18): every image of a dataset through a frozen backbone, and what
the vectors say: near-duplicate groups (leaks between splits, one photo under two
classes), label errors by confident learning, outliers, classes too small; "more like
this" over a stored vector index. The maths is trainer.ml.data_quality."""
