"""`make demo`: Merge to Learn on SmolLM2-135M-Instruct in minutes, built from the study's pieces."""
