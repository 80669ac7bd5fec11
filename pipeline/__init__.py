"""Data side of fundus-sex: annotations, selection, splits, fundus crop, TFRecords, tf.data."""
