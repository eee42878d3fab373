"""timemachine: see what your dog or cat looked like as a puppy or kitten.

A photo is framed like the training faces, projected into the latent space of a StyleGAN2-ADA generator
(NVIDIA's AFHQ models), moved along an "age vector", rendered as a video and scored.  The layers (see
ARCHITECTURE.md; tests/test_architecture.py keeps them), one job per module:

    faces       cli/ (the ``timemachine`` command), ui/ (the Streamlit app), cli/worker (queue workers)
    pipeline    pipeline/: requests in, results out; the only layer the faces call
    library     networks    the generator (official StyleGAN2-ADA semantics and call signatures)
                unpickler   the restricted, bounded unpickler for official network pickles (nothing runs)
                checkpoint  generators from official snapshots and our safetensors format; the fingerprint
                zoo/        the model zoo: manifest, trust on first use, downloads, imports, conversion
                device      choosing the device; CPU features and allocator tuning
                images      opening, validating, orienting, cropping and resizing photos
                align       framing a face from its eyes the way AFHQ's faces are framed
                detect      the animal eye detector (ONNX) behind one interface
                perceptual  LPIPS on VGG16 features
                projector   inversion into W / W+, pivotal tuning, resumable checkpoints
                latents     one projection's latent (noise, PTI delta) and its file format
                cache       the content-addressed projection store
                age/        age vectors: layers, the vector, building, the file format and library, built-ins
                discover    age directions from a generator's own samples
                clip_labeller  zero-shot young/adult labels with CLIP
                scores      the age, likeness and coat-colour scores; the automatic strength
                render      latent walks, batched synthesis (writers in ``video``)
    foundation  errors (user-facing errors, remedies), env (the environment, read once), fs (safe writes,
                content stores), settings (every default, presets)
"""

__version__ = "0.1.0"
