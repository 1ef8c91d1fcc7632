"""`make demo`: Merge to Learn on SmolLM2-135M-Instruct, sized for a CPU, built from the study's pieces."""
