"""Pure Keras/TensorFlow training code. Imports nothing from Django or the apps:
it takes arrays and a config and returns results, so it runs the same in a
Celery worker, a benchmark script or a notebook."""
