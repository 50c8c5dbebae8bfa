"""The data half of RLPT: `rlpt prepare` and the triple dataset it writes (docs/data.md).

- `pipeline.prepare(...)`: raw corpus → cleaned, deduplicated, PII-masked, decontaminated,
  segmented (context, target, next) triples in a Megatron `IndexedDataset`, plus exact texts,
  `manifest.json` and `quarantine.jsonl`.
- `dataset.TripleDataset(path)`: the reader the trainer uses (ids and exact texts per triple,
  the judge reference `reference(i, k)`).
- `tokenizer.default_tokenizer_path()` / `load_tokenizer(path)`: the small BPE shipped in the
  package, or any Hugging Face tokenizer directory.

Submodules import their heavy dependencies (Megatron, transformers) only when used.
"""
