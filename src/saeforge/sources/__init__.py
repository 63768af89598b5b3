"""Where activations come from (the first stage of the data flow).

    language_model.py   load a HookedTransformer: embedded, a local or Hugging Face checkpoint, a hub name
    fast_attention.py   TransformerLens attention through torch's fused kernel (where it gives the same result)
    data.py             token streams: the embedded corpus, local files, hub datasets; packing into contexts
    buffer.py           the device-resident, shuffled activation buffer fed by forward hooks
    cache.py            the on-disk activation cache (saeforge harvest): format, writer, reader
    toy.py              toy data with known features (the first seed's setup)
    synthetic.py        synthetic data with known hierarchical, Zipf-distributed features (SAELens's models)
    sampler.py          synthetic.py's sparse sampler (numba): only the firing entries are drawn
"""
