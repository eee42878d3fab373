"""timemachine: see what your dog or cat looked like as a puppy or kitten.

A photo is projected into the latent space of a StyleGAN2-ADA generator (NVIDIA's AFHQ models), moved
along a per-breed "age vector", and rendered as a video.  Modules, one concept each:

    networks    the generator (official StyleGAN2-ADA semantics and call signatures)
    checkpoint  loading official network pickles safely; the project's safetensors format
    weights     the model zoo, the local cache, verified downloads, imports, conversion (--model specs)
    errors      the exceptions users can cause
"""

__version__ = "0.1.0"
