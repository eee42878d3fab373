"""timemachine: see what your dog or cat looked like as a puppy or kitten.

A photo is projected into the latent space of a StyleGAN2-ADA generator (NVIDIA's AFHQ models), moved
along a per-breed "age vector", and rendered as a video.  Modules, one concept each:

    networks    the generator (official StyleGAN2-ADA semantics and call signatures)
    unpickler   the restricted, bounded unpickler for official network pickles (nothing from a file runs)
    checkpoint  generators from official snapshots and the project's safetensors format; the fingerprint
    zoo         the model zoo (a package): manifest, verified downloads, imports, conversion (--model specs)
    device      choosing the device; the CPU allocator tuning
    images      opening, validating, orienting, cropping and resizing photos
    perceptual  LPIPS on VGG16 features
    projector   inversion into W / W+, pivotal tuning, checkpoints
    latents     latent files (the official projected_w.npz format and its extras)
    cache       the content-addressed projection cache
    age         age vectors: building, applying, the library
    render      latent walks, batched synthesis, videos (writers in ``video``)
    pipeline    whole requests, called by both faces: the CLI (``cli``) and the UI (``ui/app.py``)
    errors      the exceptions users can cause
"""

__version__ = "0.1.0"
