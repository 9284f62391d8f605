"""The VALL-E language models: AR and NAR transformers, sampling and generation."""
