"""Data for genemask-jax: FASTA genomes, pretraining chunks, few-shot benchmarks, TFDS."""
