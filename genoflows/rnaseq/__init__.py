"""RNA-seq quantification domain code (no Prefect here): metadata, sources, streaming, merge, simulation."""
