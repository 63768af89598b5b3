"""The dictionary: what is trained, saved and read back.

    sae.py              the SAE interface every architecture implements (an SAE, or a transcoder: d_out,
                        skip connection), and ArchitectureConfig
    architectures/      one file per architecture: its model on one screen, its fast step, its Config
    kernels.py          numba CPU kernels of the fast steps (entries above a threshold, each row's top k)
    blocks.py           the encoder product over blocks of latents: no [batch, latents] tensor at many latents
    sparse.py           the fast steps' CSR helpers (a batch's active entries, their transpose, sampled products)
    init.py             initializers: orthogonal, xavier, data, svd, kmeans, mod, average, centroid, outlier
    io.py               the dictionary directory: save / load / check (SAELens's layout, transcoders too)
    formats.py          circuit-tracer's transcoder set, written and read
"""
